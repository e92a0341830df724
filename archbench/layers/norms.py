"""Norm and activation registries.

A norm factory is ``(dim, *, layout, eps) -> nn.Module`` normalising over channels in the
given layout; ``check_norm`` refuses a norm that cannot run in a layout, at spec time.
"""
from __future__ import annotations

import torch
from timm.layers import LayerNorm2d
from torch import nn

from archbench.layers.layout import Layout
from archbench.registry import ACTS, NORMS
from archbench.errors import UsageError

ALL_LAYOUTS = (Layout.TOKENS, Layout.NCHW, Layout.NHWC)
NORM_LAYOUTS: dict[str, tuple[Layout, ...]] = {}


def _register(name: str, layouts=ALL_LAYOUTS):
    def add(fn):
        NORM_LAYOUTS[name] = layouts
        return NORMS.register(name)(fn)
    return add


def check_norm(name: str, layout: Layout) -> None:
    NORMS.get(name)
    if layout not in NORM_LAYOUTS[name]:
        allowed = ", ".join(n for n, ls in sorted(NORM_LAYOUTS.items()) if layout in ls)
        raise UsageError(f"norm {name!r} needs the {'/'.join(str(x) for x in NORM_LAYOUTS[name])} layout "
                         f"(pyramid macro), not {layout}; in this macro use one of: {allowed}")


@_register("layernorm")
def layernorm(dim: int, *, layout: Layout, eps: float) -> nn.Module:
    """LayerNorm over channels (timm's LayerNorm2d for channels-first maps)."""
    return LayerNorm2d(dim, eps=eps) if layout == Layout.NCHW else nn.LayerNorm(dim, eps=eps)


@_register("groupnorm", (Layout.NCHW,))
def groupnorm(dim: int, *, layout: Layout, eps: float) -> nn.Module:
    """GroupNorm with one group: normalises over (C, H, W) — ShiftViT's and TransXNet's
    "LayerNorm" for channels-first maps."""
    check_norm("groupnorm", layout)  # over (B, N, C) tokens it would normalise the wrong axes
    return nn.GroupNorm(1, dim, eps=eps)


class ChannelBatchNorm(nn.Module):
    """BatchNorm over the channel (last) dim of (B, N, C) or (B, H, W, C) tensors."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return self.bn(x.reshape(-1, shape[-1])).reshape(shape)


@_register("batchnorm")
def batchnorm(dim: int, *, layout: Layout, eps: float) -> nn.Module:
    """BatchNorm over channels: statistics over batch and positions, in any layout."""
    return nn.BatchNorm2d(dim, eps=eps) if layout == Layout.NCHW else ChannelBatchNorm(dim, eps)


@_register("identity")
def identity(dim: int, *, layout: Layout, eps: float) -> nn.Module:
    """No normalisation (ablations)."""
    return nn.Identity()


ACTS.register("gelu")(nn.GELU)
ACTS.register("relu")(nn.ReLU)
ACTS.register("silu")(nn.SiLU)
ACTS.register("identity")(nn.Identity)
