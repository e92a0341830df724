"""Two-branch macro-architecture (CrossViT)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from archbench.layers.block import build_blocks, make_norm
from archbench.layers.layout import Layout
from archbench.layers.mixers.cross_attn import CrossAttention
from archbench.macros.base import (MacroModel, check_output_fmt, divisible, run_checkpointed,
                                   tokens_to_nchw)
from archbench.registry import ACTS, MACROS, STEMS
from archbench.errors import UsageError


class FusionBlock(nn.Module):
    """CrossViT fusion: the (projected) class token of one branch is the only query over
    itself plus the other branch's patch tokens; returns the updated class token (B, 1, C)."""

    def __init__(self, dim: int, heads: int, *, norm: nn.Module, qkv_bias: bool, drop_path: float):
        super().__init__()
        self.norm1 = norm
        self.mixer = CrossAttention(dim, heads=heads, grid=(1, 1), qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.drop_path(self.mixer.fuse(self.norm1(x)))


class Encoder(nn.Module):
    """One multi-scale encoder: each branch's blocks, then cross-attention fusion both ways."""

    def __init__(self, spec, grids, drop_paths: list[float], fusion_depth: int, qkv_bias: bool):
        super().__init__()
        st = spec.stages
        dims = [s.dim for s in st]
        act = ACTS.get(spec.act)

        def norm(d):
            return make_norm(spec.norm, d, Layout.TOKENS, spec.norm_eps)

        self.grids = grids
        self.blocks = nn.ModuleList(
            build_blocks(spec, s, layout=Layout.TOKENS, grid=g, num_prefix=1, drop_paths=drop_paths[:s.depth])
            for s, g in zip(st, grids))
        # branch b's class token goes to branch o = 1 - b's width, attends there, comes back
        self.projs = nn.ModuleList(
            nn.Sequential(norm(dims[b]), act(), nn.Linear(dims[b], dims[1 - b])) for b in range(2))
        self.fusion = nn.ModuleList(
            nn.ModuleList(FusionBlock(dims[1 - b], st[1 - b].heads, norm=norm(dims[1 - b]),
                                      qkv_bias=qkv_bias, drop_path=drop_paths[-1])
                          for _ in range(fusion_depth))
            for b in range(2))
        self.revert_projs = nn.ModuleList(
            nn.Sequential(norm(dims[1 - b]), act(), nn.Linear(dims[1 - b], dims[b])) for b in range(2))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-branch tokens [(B, 1+N_b, C_b)] → the same shapes; the list given is not
        changed (activation checkpointing reruns this on it)."""
        xs = list(xs)
        for b in range(2):
            for blk in self.blocks[b]:
                xs[b] = blk(xs[b], self.grids[b])
        outs = []
        for b in range(2):
            o = 1 - b
            cls = self.projs[b](xs[b][:, :1])  # (B, 1, C_o)
            for fb in self.fusion[b]:
                cls = fb(torch.cat((cls, xs[o][:, 1:]), dim=1))
            outs.append(torch.cat((self.revert_projs[b](cls), xs[b][:, 1:]), dim=1))
        return outs


@MACROS.register("two-branch")
class TwoBranch(MacroModel):
    """Two token branches (a small-patch narrow one, a large-patch wide one), each with its own
    stem, class token and position embedding; ``encoders`` multi-scale encoders of per-branch
    blocks then class-token cross-attention fusion; per-branch norm and head, logits averaged.

    ``stages`` are the two branches (depth = blocks per encoder, patch_size per branch).
    Options: ``encoders`` (K), ``fusion_depth`` (cross-attention blocks per direction; the
    published models use 1), ``fusion_qkv_bias``, ``img_scales`` (per-branch image scale:
    timm's CrossViT feeds the large branch the image resized by 224/240 with bicubic
    interpolation, so both branches see whole-patch grids).

    Features (``feature_info``, ``forward_intermediates``), as timm's CrossViT: each branch's
    patch tokens after each encoder, branch-major (index b·K + k is branch b after encoder k),
    reduction round(patch_size_b / img_scale_b).
    """

    layout = Layout.TOKENS
    family_init = "crossvit"
    option_defaults = {"encoders": 3, "fusion_depth": 1, "fusion_qkv_bias": True, "img_scales": (1.0, 1.0)}

    @classmethod
    def branch_sizes(cls, spec) -> list[tuple[int, int]]:
        scales = spec.options.as_dict().get("img_scales", (1.0, 1.0))
        return [tuple(int(s * x) for x in spec.img_size) for s in scales]

    @classmethod
    def grids(cls, spec):
        cls.check_shape(spec)
        return [divisible(size, st.patch_size, f"branch {b} patch_size")
                for b, (size, st) in enumerate(zip(cls.branch_sizes(spec), spec.stages))]

    @classmethod
    def check_shape(cls, spec) -> None:
        o = {**cls.option_defaults, **spec.options.as_dict()}
        if len(spec.stages) != 2:
            raise UsageError(f"two-branch needs exactly 2 stages (the branches), got {len(spec.stages)}")
        for b, st in enumerate(spec.stages):
            if st.patch_size < 1:
                raise UsageError(f"two-branch: branch {b} needs its own patch_size (stage patch_size), got {st.patch_size}")
            stem = STEMS.get(spec.stem.kind)
            if hasattr(stem, "check"):
                stem.check(spec.stem.replace(patch_size=st.patch_size))
        scales = o["img_scales"]
        if len(scales) != 2 or not all(isinstance(s, (int, float)) and 0 < s <= 4 for s in scales):
            raise UsageError(f"two-branch option img_scales must be two numbers in (0, 4], got {scales!r}")
        for name in ("encoders", "fusion_depth"):
            if o[name] < 1:
                raise UsageError(f"two-branch option {name} must be >= 1, got {o[name]}")

    @classmethod
    def check(cls, spec) -> None:
        if not spec.class_token:
            raise UsageError("two-branch fuses the branches through their class tokens: class_token must be True")

    def __init__(self, spec):
        super().__init__(spec)
        o = self.opts
        dims = [s.dim for s in spec.stages]
        self.num_features = sum(dims)
        self.sizes = self.branch_sizes(spec)
        grids = self.branch_grids = self.grids(spec)
        self.stem = nn.ModuleList(self.make_stem(spec.stem.replace(patch_size=st.patch_size), st.dim)
                                  for st in spec.stages)
        for b, (d, g) in enumerate(zip(dims, grids)):
            setattr(self, f"cls_token_{b}", nn.Parameter(torch.zeros(1, 1, d)))
            setattr(self, f"pos_embed_{b}",
                    nn.Parameter(torch.zeros(1, 1 + g[0] * g[1], d)) if spec.pos_embed else None)
        per_enc = max(s.depth for s in spec.stages)
        total = o["encoders"] * per_enc
        rates = [spec.drop_path * i / max(total - 1, 1) for i in range(total)]
        self.blocks = nn.ModuleList(
            Encoder(spec, grids, rates[k * per_enc:(k + 1) * per_enc], o["fusion_depth"], o["fusion_qkv_bias"])
            for k in range(o["encoders"]))
        self.norm = nn.ModuleList(make_norm(spec.norm, d, self.layout, spec.norm_eps) for d in dims)
        self.head_drop = nn.Dropout(spec.drop_rate)
        self.head = nn.ModuleList(self.make_head(d) for d in dims)
        self.num_encoders = len(self.blocks)  # K: fixes the feature index space, pruned or not
        self.feature_info = [dict(num_chs=st.dim, reduction=round(st.patch_size / scale), module=f"blocks.{k}")
                             for st, scale in zip(spec.stages, o["img_scales"]) for k in range(self.num_encoders)]
        self.finish_init()

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^stem",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def _embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) image → per-branch tokens [(B, 1+N_b, C_b)] with position embedding."""
        xs = []
        for b, stem in enumerate(self.stem):
            xb = x if tuple(x.shape[-2:]) == self.sizes[b] else F.interpolate(
                x, size=self.sizes[b], mode="bicubic", align_corners=False)
            xb = stem(xb).flatten(2).transpose(1, 2)  # (B, N_b, C_b)
            xb = torch.cat((getattr(self, f"cls_token_{b}").expand(xb.shape[0], -1, -1), xb), dim=1)
            pos = getattr(self, f"pos_embed_{b}")
            xs.append(xb if pos is None else xb + pos)
        return xs

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) image → per-branch normalised tokens [(B, 1+N_b, C_b)]."""
        xs = self._embed(x)
        for enc in self.blocks:
            xs = run_checkpointed(self.grad_checkpointing, enc, xs)
        return [norm(xb) for norm, xb in zip(self.norm, xs)]

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's CrossViT ``forward_intermediates``: the patch tokens of branch b after encoder
        k for each index b·K + k that ``indices`` picks (None: all 2K; n: the last n; a list:
        those), as (B, C_b, h_b, w_b) or, with ``output_fmt='NLC'``, (B, N_b, C_b); ``norm``
        applies each branch's final norm; ``stop_early`` skips the encoders after the last one
        needed. Returns ``(per-branch final features, intermediates)`` or only the latter."""
        check_output_fmt(output_fmt, ("NCHW", "NLC"))
        K = self.num_encoders
        take, _ = self.take_indices(2 * K, indices)
        last = max(i % K for i in take)
        xs = self._embed(x)
        per_branch: list[list[torch.Tensor]] = [[], []]
        for k, enc in enumerate(self.blocks[:last + 1] if stop_early else self.blocks):
            xs = run_checkpointed(self.grad_checkpointing, enc, xs)
            for b, norm_b in enumerate(self.norm):
                if b * K + k in take:
                    per_branch[b].append((norm_b(xs[b]) if norm else xs[b])[:, 1:])  # (B, N_b, C_b)
        if output_fmt == "NCHW":
            per_branch = [[tokens_to_nchw(y, g) for y in ys] for ys, g in zip(per_branch, self.branch_grids)]
        out = per_branch[0] + per_branch[1]  # branch-major: the index order
        if intermediates_only:
            return out
        return [norm_b(xb) for norm_b, xb in zip(self.norm, xs)], out

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the encoders after the last one ``indices`` needs (and the norms, the heads).
        Indices keep their meaning (b·K + k with the unpruned K). Taking one branch only still
        keeps the other's fusion in the last encoder (DDP then needs find_unused_parameters)."""
        take, _ = self.take_indices(2 * self.num_encoders, indices)
        self.blocks = self.blocks[:max(i % self.num_encoders for i in take) + 1]
        if prune_norm:
            self.norm = nn.ModuleList(nn.Identity() for _ in self.norm)
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_head(self, xs: list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        xs = [x[:, 0] if self.global_pool == "token" else x[:, 1:].mean(dim=1) for x in xs]
        xs = [self.head_drop(x) for x in xs]
        if pre_logits or self.num_classes == 0:  # headless: the pooled features, as timm's CrossViT
            return torch.cat(xs, dim=1)
        return torch.stack([head(x) for head, x in zip(self.head, xs)]).mean(dim=0)
