"""TransXNet's multi-scale FFN."""
from __future__ import annotations

import torch
from torch import nn

from archbench.layers.layout import Layout
from archbench.registry import FFNS
from archbench.errors import UsageError


class MultiScaleDWConv(nn.Module):
    """Depthwise convs of different kernels over channel splits (the first split takes the
    remainder, as the official code), concatenated back. (B, C, H, W) → same."""

    def __init__(self, dim: int, kernels: tuple[int, ...]):
        super().__init__()
        n = len(kernels)
        self.channels = [dim - dim // n * (n - 1)] + [dim // n] * (n - 1)
        self.proj = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c)
                                  for c, k in zip(self.channels, kernels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(t) for conv, t in zip(self.proj, x.split(self.channels, dim=1))], dim=1)


@FFNS.register("msffn")
class MSFFN(nn.Module):
    """MS-FFN (Lou et al., 2023): 1x1 conv (no bias) → act → BN; multi-scale depthwise conv
    (kernels 1, 3, 5, 7 over channel quarters) with a residual; act → BN; 1x1 conv (no bias)
    → BN. Names follow the official ``Mlp`` (``fc1``, ``dwconv``, ``norm``, ``fc2``).
    (B, C, H, W) → (B, C, H, W)."""

    layout = Layout.NCHW

    def __init__(self, dim: int, *, hidden: int, act: type[nn.Module], drop: float,
                 kernels: tuple[int, ...] = (1, 3, 5, 7)):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Conv2d(dim, hidden, 1, bias=False), act(), nn.BatchNorm2d(hidden))
        self.dwconv = MultiScaleDWConv(hidden, tuple(kernels))
        self.act = act()
        self.norm = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Sequential(nn.Conv2d(hidden, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.drop = nn.Dropout(drop)

    @staticmethod
    def check(dim: int, hidden: int, *, kernels: tuple[int, ...]) -> None:
        if not kernels or any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in kernels):
            raise UsageError(f"msffn: kernels={kernels!r} must be odd positive integers")
        if hidden < len(kernels):
            raise UsageError(f"msffn: hidden width {hidden} is narrower than its {len(kernels)} kernel groups; "
                             "raise dim or mlp_ratio")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.norm(self.act(self.dwconv(x) + x))
        return self.drop(self.fc2(self.drop(x)))
