"""Tensor layouts, and the one helper that moves a block's tensor into a part's layout.

Each macro-architecture carries its activations in one layout; each token mixer and FFN
declares the layout it consumes (class attribute ``layout``). A block bridges the two once,
through :class:`LayoutBridge`, so parts never guess what they are given.

Prefix tokens (class tokens) exist only in the ``TOKENS`` layout. A part that works on the
2-D grid (shift, outlook, D-Mixer, MS-FFN, conv position encoding) never sees them:
the patch tokens are reshaped to the grid, and the prefix tokens pass the part unchanged —
in a residual branch their update is zero, in an inline (non-residual) part they are kept.
This is the one rule for every grid part used in a token macro (e.g. shift in a ViT).
"""
from __future__ import annotations

from enum import Enum

import torch
from torch import nn


class Layout(str, Enum):
    TOKENS = "tokens"  # (B, N, C): num_prefix prefix tokens, then the H*W grid row-major
    NCHW = "nchw"  # (B, C, H, W)
    NHWC = "nhwc"  # (B, H, W, C)
    ANY = "any"  # pointwise part: built for, and run in, whatever layout the block carries

    def __str__(self) -> str:
        return self.value


def split_prefix(x: torch.Tensor, num_prefix: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(B, P+N, C) → prefix (B, P, C) or None, patch tokens (B, N, C)."""
    if num_prefix == 0:
        return None, x
    return x[:, :num_prefix], x[:, num_prefix:]


def convert(x: torch.Tensor, src: Layout, dst: Layout, hw: tuple[int, int]) -> torch.Tensor:
    """Move a prefix-free tensor from ``src`` to ``dst`` layout; ``hw`` is the grid size."""
    if src == dst or dst == Layout.ANY:
        return x
    H, W = hw
    if src == Layout.TOKENS:
        B, _, C = x.shape
        x = x.reshape(B, H, W, C)  # (B, H, W, C)
        return x if dst == Layout.NHWC else x.permute(0, 3, 1, 2)  # (B, C, H, W)
    if src == Layout.NHWC:
        if dst == Layout.TOKENS:
            return x.flatten(1, 2)  # (B, H*W, C)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W)
    # src == NCHW
    if dst == Layout.TOKENS:
        return x.flatten(2).transpose(1, 2)  # (B, H*W, C)
    return x.permute(0, 2, 3, 1)  # (B, H, W, C)


class LayoutBridge:
    """Runs a part that consumes ``dst`` on a tensor carried in ``src``.

    ``inline`` says how prefix tokens come back: kept as they were (inline part, e.g. the
    shift) or as zeros (the part's output is a residual update).
    """

    def __init__(self, src: Layout, dst: Layout, num_prefix: int = 0, inline: bool = False):
        if num_prefix and src != Layout.TOKENS:
            raise ValueError(f"prefix tokens need the tokens layout, not {src}")
        self.src = src
        self.dst = src if dst == Layout.ANY else dst
        self.identity = self.src == self.dst
        self.num_prefix = num_prefix
        self.inline = inline

    def __call__(self, part: nn.Module, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        if self.identity:
            return part(x)
        prefix, x = split_prefix(x, self.num_prefix)
        y = convert(part(convert(x, self.src, self.dst, hw)), self.dst, self.src, hw)
        if prefix is None:
            return y
        keep = prefix if self.inline else torch.zeros_like(prefix)
        return torch.cat((keep, y), dim=1)
