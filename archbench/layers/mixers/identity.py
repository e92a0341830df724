"""The ``none`` mixer: no spatial mixing at all (the control arm of ablations)."""
from __future__ import annotations

import torch
from torch import nn

from archbench.layers.layout import Layout
from archbench.registry import MIXERS


@MIXERS.register("none")
class NoMixer(nn.Module):
    """Identity, applied inline: the block reduces to ``x = x + FFN(norm(x))``, so no
    information moves between positions. Asks "is any spatial mixing needed?"."""

    layout = Layout.ANY
    residual = False
    reads_prefix = False
    home_macro = "pyramid"  # the control arm of ShiftViT's study

    def __init__(self, dim: int, *, heads: int, grid: tuple[int, int], layout: Layout):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
