"""Multi-head self-attention (ViT)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archbench.layers.layout import Layout
from archbench.registry import MIXERS
from archbench.errors import UsageError


@MIXERS.register("msa")
class Attention(nn.Module):
    """Global multi-head self-attention over all tokens, prefix tokens included, through
    ``F.scaled_dot_product_attention``. Same parameters and names as timm's ViT ``Attention``
    (``qkv``, ``proj``). Input and output (B, N, C); on grids the block flattens the map."""

    layout = Layout.TOKENS
    residual = True
    reads_prefix = True
    home_macro = "isotropic"  # ViT / DeiT

    def __init__(self, dim: int, *, heads: int, grid: tuple[int, int], qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @staticmethod
    def check(dim: int, heads: int, grid, **_) -> None:
        if dim % heads:
            raise UsageError(f"msa: heads={heads} does not divide dim={dim}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, N, d) each
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))
