"""Isotropic macro-architecture (ViT / DeiT)."""
from __future__ import annotations

import torch
from torch import nn

from archbench.layers.block import build_blocks, drop_path_rates, make_norm
from archbench.layers.layout import Layout
from archbench.macros.base import (MacroModel, check_output_fmt, divisible, run_checkpointed,
                                   tokens_to_nchw)
from archbench.registry import MACROS, MIXERS
from archbench.errors import UsageError


@MACROS.register("isotropic")
class Isotropic(MacroModel):
    """Patch embedding, optional class token and learned absolute position embedding, blocks
    at one width on the token sequence (B, N, C), final norm, then the class token or the
    average of the patch tokens into a linear head.

    Stages here are runs of blocks at the same width (so mixers can differ along depth).
    Grid mixers (shift, outlook, dmixer, cross-attn) leave the class token untouched, so a
    class-token readout needs at least one ``msa`` stage; otherwise use ``pool='avg'``.

    Features (``feature_info``, ``forward_intermediates``): one per block, its patch tokens,
    reduction = the patch size — as timm's ViT.
    """

    layout = Layout.TOKENS
    family_init = "timm-vit"

    @classmethod
    def grids(cls, spec):
        grid = divisible(spec.img_size, spec.stem.patch_size, "patch_size")
        return [grid] * len(spec.stages)

    @classmethod
    def check(cls, spec) -> None:
        dims = sorted({s.dim for s in spec.stages})
        if len(dims) > 1:
            raise UsageError(f"isotropic stages share one width, got dims {dims}; use the pyramid "
                             "macro for changing widths")
        if any(s.patch_size for s in spec.stages):
            raise UsageError("stage patch_size is for two-branch branches; isotropic uses stem.patch_size")
        if spec.pool == "token" and not any(MIXERS.get(s.mixer).reads_prefix for s in spec.stages):
            mixers = sorted({s.mixer for s in spec.stages})
            raise UsageError(f"pool='token' reads the class token, but mixer(s) {', '.join(mixers)} never "
                             "update it (they mix the patch grid only); use pool='avg' or an msa stage")

    def __init__(self, spec):
        super().__init__(spec)
        dim = self.num_features = spec.stages[0].dim
        self.grid = self.grids(spec)[0]
        self.num_prefix = int(spec.class_token)
        self.stem = self.make_stem(spec.stem, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if spec.class_token else None
        n = self.num_prefix + self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, n, dim)) if spec.pos_embed else None
        self.blocks = nn.ModuleList(
            blk for st, dpr in zip(spec.stages, drop_path_rates(spec))
            for blk in build_blocks(spec, st, layout=self.layout, grid=self.grid,
                                    num_prefix=self.num_prefix, drop_paths=dpr))
        self.norm = make_norm(spec.norm, dim, self.layout, spec.norm_eps)
        self.head_drop = nn.Dropout(spec.drop_rate)
        self.head = self.make_head(dim)
        self.feature_info = [dict(num_chs=dim, reduction=spec.stem.patch_size, module=f"blocks.{i}")
                             for i in range(len(self.blocks))]
        self.finish_init()

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|^pos_embed|^stem",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) image → (B, P+N, C) tokens with position embedding, and the grid."""
        x = self.stem(x)  # (B, C, h, w)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return x, hw

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image → (B, P+N, C) normalised tokens."""
        x, hw = self._embed(x)
        for blk in self.blocks:
            x = run_checkpointed(self.grad_checkpointing, blk, x, hw)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's ``forward_intermediates``: the patch tokens after the blocks ``indices`` picks
        (None: all; n: the last n; a list: those), as (B, C, h, w) or, with ``output_fmt='NLC'``,
        (B, N, C); ``norm`` passes them through the final norm; ``stop_early`` skips the blocks
        after the last one taken. Returns ``(forward_features(x), intermediates)``, or only the
        intermediates."""
        check_output_fmt(output_fmt, ("NCHW", "NLC"))
        take, last = self.take_indices(len(self.blocks), indices)
        x, hw = self._embed(x)
        out = []
        for i, blk in enumerate(self.blocks[:last + 1] if stop_early else self.blocks):
            x = run_checkpointed(self.grad_checkpointing, blk, x, hw)
            if i in take:
                out.append((self.norm(x) if norm else x)[:, self.num_prefix:])  # (B, N, C)
        if output_fmt == "NCHW":
            out = [tokens_to_nchw(y, hw) for y in out]
        return out if intermediates_only else (self.norm(x), out)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last one ``indices`` takes (and the norm, the head)."""
        take, last = self.take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:last + 1]
        self.feature_info = self.feature_info[:last + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)
