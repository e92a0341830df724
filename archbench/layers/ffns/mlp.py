"""The plain two-layer MLP."""
from __future__ import annotations

import torch
from torch import nn

from archbench.layers.layout import Layout
from archbench.registry import FFNS


@FFNS.register("mlp")
class Mlp(nn.Module):
    """fc1 → act → dropout → fc2 → dropout, per position. Linear layers over the last dim
    for (B, N, C) and (B, H, W, C); 1x1 convs for (B, C, H, W) (as ShiftViT's official code,
    avoiding two permutes per block). Names ``fc1``/``fc2`` as timm's ``Mlp``."""

    layout = Layout.ANY

    def __init__(self, dim: int, *, hidden: int, act: type[nn.Module], drop: float, layout: Layout,
                 bias: bool = True):
        super().__init__()
        if layout == Layout.NCHW:
            self.fc1, self.fc2 = nn.Conv2d(dim, hidden, 1, bias=bias), nn.Conv2d(hidden, dim, 1, bias=bias)
        else:
            self.fc1, self.fc2 = nn.Linear(dim, hidden, bias=bias), nn.Linear(hidden, dim, bias=bias)
        self.act = act()
        self.drop1, self.drop2 = nn.Dropout(drop), nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
