"""Two-stage macro-architecture (VOLO)."""
from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from archbench.layers.block import build_blocks, drop_path_rates, make_norm
from archbench.layers.layout import Layout
from archbench.layers.mixers.cross_attn import CrossAttention
from archbench.macros.base import MacroModel, divisible
from archbench.macros.pyramid import Stage
from archbench.registry import ACTS, FFNS, MACROS
from archbench.errors import UsageError


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
        self.aux_head = self.make_head(coarse.dim) if o["aux_head"] and spec.num_classes > 0 else None
        self.init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image → (B, P+N, C) normalised tokens at the coarse grid."""
        x = self.stem(x).permute(0, 2, 3, 1)  # (B, h, w, C)
        for i, stage in enumerate(self.stages):
            x = stage.downsample(x)
            if i == 1 and self.pos_embed is not None:
                x = x + self.pos_embed
            hw = (x.shape[1], x.shape[2])
            for blk in stage.blocks:
                x = blk(x, hw)
        x = x.flatten(1, 2)  # (B, N, C)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            for blk in self.post:
                x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        num_prefix = int(self.cls_token is not None)
        out = x[:, 0] if self.spec.pool == "token" else x[:, num_prefix:].mean(dim=1)
        out = self.head_drop(out)
        if pre_logits:
            return out
        out = self.head(out)
        if self.aux_head is not None:
            out = out + 0.5 * self.aux_head(x[:, 1:]).max(dim=1)[0]
        return out
