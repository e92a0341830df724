"""The MetaFormer block: position encoding, token mixer, FFN — each a residual branch.

    x = x + cpe(x)                                   # if block_pos (TransXNet's DPE)
    x = x + drop_path(ls1(mixer(norm1(x))))          # residual mixers
    x = mixer(x)                                     # inline mixers (ShiftViT's shift)
    x = x + drop_path(ls2(ffn(norm2(x))))

The block carries its macro's layout; each part declares its own, and the block bridges
them through :class:`~archbench.layers.layout.LayoutBridge` (see that module for how prefix
tokens pass grid parts).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from archbench.layers.layout import Layout, LayoutBridge
from archbench.registry import ACTS, FFNS, MIXERS, NORMS


def make_norm(name: str, dim: int, layout: Layout, eps: float) -> nn.Module:
    return NORMS.get(name)(dim, layout=layout, eps=eps)


class LayerScale(nn.Module):
    """Per-channel scale (and optional bias) of a residual branch, in any layout.

    With a bias in NCHW it is TransXNet's layer scale: a depthwise 1x1 conv, kept as a conv
    so FLOP counters see the same op as in the reference code.
    """

    def __init__(self, dim: int, *, init: float, bias: bool, layout: Layout):
        super().__init__()
        self.channels_first = layout == Layout.NCHW
        shape = (dim, 1, 1, 1) if self.channels_first else (dim,)
        self.weight = nn.Parameter(torch.full(shape, float(init)))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            return F.conv2d(x, self.weight, self.bias, groups=x.shape[1])
        return x * self.weight if self.bias is None else torch.addcmul(self.bias, x, self.weight)


class ConvPosEnc(nn.Module):
    """Depthwise conv position encoding on the grid (NCHW), added as a residual."""

    layout = Layout.NCHW

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Block(nn.Module):
    """One token mixer + one FFN, built from a stage of a spec (see module docstring)."""

    def __init__(self, spec, stage, *, layout: Layout, grid: tuple[int, int],
                 num_prefix: int = 0, drop_path: float = 0.0):
        super().__init__()
        dim = stage.dim
        mixer_cls, ffn_cls = MIXERS.get(stage.mixer), FFNS.get(stage.ffn)
        self.inline = not mixer_cls.residual

        self.cpe = ConvPosEnc(dim, spec.block_pos) if spec.block_pos else None
        self._cpe = LayoutBridge(layout, Layout.NCHW, num_prefix)

        mopts = stage.mixer_options.as_dict()
        if mixer_cls.layout == Layout.ANY:
            mopts["layout"] = layout
        self.norm1 = nn.Identity() if self.inline else make_norm(spec.norm, dim, layout, spec.norm_eps)
        self.mixer = mixer_cls(dim, heads=stage.heads, grid=grid, **mopts)
        self._mix = LayoutBridge(layout, mixer_cls.layout, num_prefix, inline=self.inline)
        self.ls1 = self._layer_scale(spec, dim, layout) if not self.inline else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 and not self.inline else nn.Identity()

        fopts = stage.ffn_options.as_dict()
        if ffn_cls.layout == Layout.ANY:
            fopts["layout"] = layout
        self.norm2 = make_norm(spec.norm, dim, layout, spec.norm_eps)
        self.ffn = ffn_cls(dim, hidden=int(dim * stage.mlp_ratio), act=ACTS.get(spec.act),
                           drop=spec.drop_rate, **fopts)
        self._ffn = LayoutBridge(layout, ffn_cls.layout, num_prefix)
        self.ls2 = self._layer_scale(spec, dim, layout)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @staticmethod
    def _layer_scale(spec, dim: int, layout: Layout) -> nn.Module:
        if not spec.layer_scale:
            return nn.Identity()
        return LayerScale(dim, init=spec.layer_scale, bias=spec.layer_scale_bias, layout=layout)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """x in the macro's layout; hw is the token grid (needed to reshape token layouts)."""
        if self.cpe is not None:
            x = x + self._cpe(self.cpe, x, hw)
        if self.inline:
            x = self._mix(self.mixer, x, hw)
        else:
            x = x + self.drop_path1(self.ls1(self._mix(self.mixer, self.norm1(x), hw)))
        return x + self.drop_path2(self.ls2(self._ffn(self.ffn, self.norm2(x), hw)))


def build_blocks(spec, stage, *, layout: Layout, grid, num_prefix: int, drop_paths) -> nn.ModuleList:
    """A stage's blocks; mixers that share per-stage parameters (tie_to) are tied here."""
    blocks = nn.ModuleList(
        Block(spec, stage, layout=layout, grid=grid, num_prefix=num_prefix, drop_path=dp)
        for dp in drop_paths)
    first = blocks[0].mixer
    if hasattr(first, "tie_to"):
        for blk in blocks[1:]:
            blk.mixer.tie_to(first)
    return blocks


def drop_path_rates(spec) -> list[list[float]]:
    """Stochastic depth per block, linear from 0 to spec.drop_path over all blocks."""
    total = spec.depth
    rates = [spec.drop_path * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, k = [], 0
    for st in spec.stages:
        out.append(rates[k:k + st.depth])
        k += st.depth
    return out
