"""PoolFormer's token mixer (MetaFormer, Yu et al., CVPR 2022): average pooling minus identity."""
from __future__ import annotations

import torch
from torch import nn

from archbench.layers.layout import Layout
from archbench.registry import MIXERS


@MIXERS.register("pool")
class Pooling(nn.Module):
    """``AvgPool(k, stride 1, same padding, padding not counted)(x) - x`` on (B, C, H, W): the
    MetaFormer paper's "is the token mixer's form what matters?" control. No parameters; the
    identity is subtracted because the block adds its input back. A pre-norm residual branch
    (PoolFormer: x + ls(pool(norm(x)))) whose home is the pyramid. Pooling only adds, so it
    counts 0 multiply-accumulates, as fvcore and the paper count it."""

    layout = Layout.NCHW
    residual = True
    reads_prefix = False
    home_macro = "pyramid"  # PoolFormer

    def __init__(self, dim: int, *, heads: int, grid: tuple[int, int], pool_size: int = 3):
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    @staticmethod
    def check(dim: int, heads: int, grid, *, pool_size: int) -> None:
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f"pool: pool_size={pool_size} must be odd and >= 1 (same padding keeps the grid)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x
