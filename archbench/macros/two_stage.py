"""Two-stage macro-architecture (VOLO)."""
from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from archbench.layers.block import build_blocks, drop_path_rates, make_norm
from archbench.layers.layout import Layout
from archbench.layers.mixers.cross_attn import CrossAttention
from archbench.macros.base import MacroModel, check_output_fmt, divisible, run_checkpointed
from archbench.registry import ACTS, FFNS, MACROS
from archbench.errors import UsageError


class Stage(nn.Module):
    """A container: optional downsampling, then blocks at one resolution. ``TwoStage`` runs
    the parts one by one (the position embedding goes between the two in stage 1)."""

    def __init__(self, downsample: nn.Module, blocks: nn.ModuleList):
        super().__init__()
        self.downsample = downsample
        self.blocks = blocks


class Downsample(nn.Module):
    """2x2/2 conv (with bias) on a (B, H, W, C) map."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ClassBlock(nn.Module):
    """Class attention (CaiT/VOLO): only the class token queries all tokens, then an MLP on
    the class token alone; the patch tokens pass through unchanged."""

    def __init__(self, spec, stage, *, qkv_bias: bool, drop_path: float):
        super().__init__()
        dim = stage.dim
        self.norm1 = make_norm(spec.norm, dim, Layout.TOKENS, spec.norm_eps)
        self.mixer = CrossAttention(dim, heads=stage.heads, grid=(1, 1), qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = make_norm(spec.norm, dim, Layout.TOKENS, spec.norm_eps)
        # the class token is a single token: a pointwise MLP whatever the stage's FFN
        self.ffn = FFNS.get("mlp")(dim, hidden=int(dim * stage.mlp_ratio), act=ACTS.get(spec.act),
                                   drop=spec.drop_rate, layout=Layout.TOKENS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1] + self.drop_path(self.mixer.fuse(self.norm1(x)))  # (B, 1, C)
        cls = cls + self.drop_path(self.ffn(self.norm2(cls)))
        return torch.cat((cls, x[:, 1:]), dim=1)


@MACROS.register("two-stage")
class TwoStage(MacroModel):
    """VOLO's layout: a stem to stride p, stage 0 at that fine resolution, a 2x2/2
    downsampling, the absolute position embedding, stage 1 at the coarse resolution, then
    ``class_blocks`` class-attention blocks on [class token; patch tokens]; norm; head on the
    class token plus, with ``aux_head``, token labelling's auxiliary head
    (``logits + 0.5 * max over tokens of aux_head(tokens)``). Layout (B, H, W, C).

    Options: ``class_blocks`` (0 for none: then pool='avg'), ``aux_head``,
    ``class_qkv_bias``.

    Features (``feature_info``, ``forward_intermediates``): one per block of both stages, its
    map, reduction p (stage 0) or 2p (stage 1). timm's VOLO gives one per stage of its
    ``network``; here the coarse blocks are one stage, so per block is the finer choice.
    """

    layout = Layout.NHWC
    family_init = "volo"
    option_defaults = {"class_blocks": 2, "aux_head": True, "class_qkv_bias": False}

    @classmethod
    def grids(cls, spec):
        if len(spec.stages) != 2:
            raise UsageError(f"two-stage needs exactly 2 stages (fine, coarse), got {len(spec.stages)}")
        p = spec.stem.patch_size
        H, W = divisible(spec.img_size, 2 * p, f"the two-stage total stride (patch_size {p} x 2)")
        return [(2 * H, 2 * W), (H, W)]

    @classmethod
    def check(cls, spec) -> None:
        o = {**cls.option_defaults, **spec.options.as_dict()}
        if o["class_blocks"] < 0:
            raise UsageError(f"two-stage option class_blocks must be >= 0, got {o['class_blocks']}")
        if (o["class_blocks"] > 0) != spec.class_token:
            raise UsageError("two-stage: class_blocks > 0 needs class_token=True and class_token needs "
                             f"class blocks (got class_blocks={o['class_blocks']}, class_token={spec.class_token})")
        if o["aux_head"] and spec.pool != "token":
            raise UsageError("two-stage: aux_head adds to the class-token logits; it needs pool='token'")
        if any(s.patch_size for s in spec.stages):
            raise UsageError("stage patch_size is for two-branch branches; two-stage uses stem.patch_size")

    def __init__(self, spec):
        super().__init__(spec)
        o = self.opts
        fine, coarse = spec.stages
        self.num_features = coarse.dim
        grids = self.grids(spec)
        self.stem = self.make_stem(spec.stem, fine.dim)
        dprs = drop_path_rates(spec)
        self.stages = nn.ModuleList([
            Stage(nn.Identity(), build_blocks(spec, fine, layout=self.layout, grid=grids[0],
                                              num_prefix=0, drop_paths=dprs[0])),
            Stage(Downsample(fine.dim, coarse.dim),
                  build_blocks(spec, coarse, layout=self.layout, grid=grids[1], num_prefix=0,
                               drop_paths=dprs[1]))])
        self.pos_embed = nn.Parameter(torch.zeros(1, *grids[1], coarse.dim)) if spec.pos_embed else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, coarse.dim)) if spec.class_token else None
        self.post = nn.ModuleList(ClassBlock(spec, coarse, qkv_bias=o["class_qkv_bias"], drop_path=0.0)
                                  for _ in range(o["class_blocks"]))
        self.norm = make_norm(spec.norm, coarse.dim, Layout.TOKENS, spec.norm_eps)
        self.head_drop = nn.Dropout(spec.drop_rate)
        self.head = self.make_head(coarse.dim)
        self.use_aux_head = o["aux_head"]
        self.aux_head = self.make_head(coarse.dim) if self.use_aux_head and spec.num_classes > 0 else None
        p = spec.stem.patch_size
        self.feature_info = [dict(num_chs=st.dim, reduction=p * 2 ** i, module=f"stages.{i}.blocks.{j}")
                             for i, st in enumerate(spec.stages) for j in range(st.depth)]
        self.finish_init()

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem|^pos_embed",
                    blocks=[(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)],
                    blocks2=[(r"^cls_token", (0,)), (r"^post\.(\d+)", None), (r"^norm", (99999,))])

    def reset_classifier(self, num_classes: int) -> None:
        """The head, and token labelling's aux head while there are classes (as timm's VOLO)."""
        super().reset_classifier(num_classes)
        has_aux = self.use_aux_head and num_classes > 0 and self.cls_token is not None
        if not has_aux:
            self.aux_head = None
        elif self.aux_head is None:
            self.aux_head = self.new_head(self.num_features)

    def _enter(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage i's (B, h, w, C) input: downsampled, plus the position embedding in stage 1."""
        x = self.stages[i].downsample(x)
        if i == 1 and self.pos_embed is not None:
            x = x + self.pos_embed
        return x

    def _post(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's (B, h, w, C) map → (B, P+N, C) normalised tokens."""
        x = x.flatten(1, 2)  # (B, N, C)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            for blk in self.post:
                x = run_checkpointed(self.grad_checkpointing, blk, x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image → (B, P+N, C) normalised tokens at the coarse grid."""
        x = self.stem(x).permute(0, 2, 3, 1)  # (B, h, w, C)
        for i, stage in enumerate(self.stages):
            x = self._enter(i, x)
            hw = (x.shape[1], x.shape[2])
            for blk in stage.blocks:
                x = run_checkpointed(self.grad_checkpointing, blk, x, hw)
        return self._post(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's ``forward_intermediates``, per block (flat index over both stages): the maps
        after the blocks ``indices`` picks (None: all; n: the last n; a list: those), as
        (B, C, h, w) or, with ``output_fmt='NLC'``, (B, h·w, C); ``norm`` applies the final norm
        to stage-1 maps (the width it is sized for); ``stop_early`` skips the blocks after the
        last one taken. Returns ``(final, intermediates)`` — ``final`` is
        ``forward_features(x)`` when every block ran, else the last map's tokens (B, h·w, C)
        without class blocks or norm, as timm's VOLO — or only the intermediates."""
        check_output_fmt(output_fmt, ("NCHW", "NLC"))
        n = len(self.feature_info)
        take, last = self.take_indices(n, indices)
        x = self.stem(x).permute(0, 2, 3, 1)  # (B, h, w, C)
        k, out = 0, []  # k: flat block index
        for i, stage in enumerate(self.stages):
            if stop_early and k > last:
                break
            x = self._enter(i, x)
            hw = (x.shape[1], x.shape[2])
            for blk in stage.blocks[:last + 1 - k] if stop_early else stage.blocks:
                x = run_checkpointed(self.grad_checkpointing, blk, x, hw)
                if k in take:
                    # the norm is stage 1's width, and made for (B, N, C) tokens
                    y = self.norm(x.flatten(1, 2)).reshape(x.shape) if norm and i == 1 else x
                    out.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y.flatten(1, 2))
                k += 1
        if intermediates_only:
            return out
        return (self._post(x) if k == n else x.flatten(1, 2)), out

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last one ``indices`` takes. The class token, class blocks
        and heads go with the head (or with the last block); the position embedding and the
        final norm go with stage 1, as in timm's VOLO."""
        take, last = self.take_indices(len(self.feature_info), indices)
        pruned_end = last < len(self.feature_info) - 1
        n0 = len(self.stages[0].blocks)
        if last < n0:
            self.stages = self.stages[:1]
            self.stages[0].blocks = self.stages[0].blocks[:last + 1]
            self.pos_embed = None
            prune_norm = True
        else:
            self.stages[1].blocks = self.stages[1].blocks[:last + 1 - n0]
        self.feature_info = self.feature_info[:last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if pruned_end:
            self.num_features = self.feature_info[last]["num_chs"]
        if prune_head or pruned_end:
            self.cls_token = None
            self.post = nn.ModuleList()
            self.global_pool = "avg"
            self.reset_classifier(0)
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        num_prefix = int(self.cls_token is not None)
        out = x[:, 0] if self.global_pool == "token" else x[:, num_prefix:].mean(dim=1)
        out = self.head_drop(out)
        if pre_logits:
            return out
        out = self.head(out)
        if self.aux_head is not None:
            out = out + 0.5 * self.aux_head(x[:, 1:]).max(dim=1)[0]  # (B, N, K) → max over tokens
        return out
