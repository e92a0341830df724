"""Cross-attention: CrossViT's class-token fusion, VOLO's class attention, and cross-scale
attention as a block mixer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archbench.layers.layout import Layout
from archbench.registry import MIXERS
from archbench.errors import UsageError


@MIXERS.register("cross-attn")
class CrossAttention(nn.Module):
    """Multi-head attention whose queries and keys/values come from different token sets.

    - ``fuse(x)``: CrossViT's fusion, exactly timm's ``CrossAttention``: the first token of
      ``x`` (a class token projected from the other branch) is the only query over all of
      ``x``; returns (B, 1, C). Linear, not quadratic, in the token count. VOLO's class
      attention is the same computation (its fused ``kv`` maps onto ``wk``/``wv``).
    - ``forward(x)`` as a block mixer, (B, H, W, C) → (B, H, W, C): *cross-scale*
      attention. Every position queries keys and values computed from the map average-pooled
      by ``scale`` (ceil mode), so each token attends to a coarser copy of the image — cost
      N·N/scale² instead of N².

    Parameters as timm's CrossViT ``CrossAttention``: ``wq``, ``wk``, ``wv``, ``proj``.
    """

    layout = Layout.NHWC
    residual = True
    reads_prefix = False
    home_macro = "two-branch"  # CrossViT

    def __init__(self, dim: int, *, heads: int, grid: tuple[int, int], qkv_bias: bool = True, scale: int = 2,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    @staticmethod
    def check(dim: int, heads: int, grid, *, scale: int, **_) -> None:
        if dim % heads:
            raise UsageError(f"cross-attn: heads={heads} does not divide dim={dim}")
        if scale < 1:
            raise UsageError(f"cross-attn: scale={scale} must be >= 1 (the pooling of keys/values)")

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, C = t.shape
        return t.reshape(B, N, self.heads, C // self.heads).transpose(1, 2)  # (B, h, N, d)

    def attend(self, q_src: torch.Tensor, kv_src: torch.Tensor) -> torch.Tensor:
        """(B, Nq, C) queries over (B, Nk, C) keys/values → (B, Nq, C)."""
        B, Nq, C = q_src.shape
        q, k, v = self._heads(self.wq(q_src)), self._heads(self.wk(kv_src)), self._heads(self.wv(kv_src))
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, Nq, C)))

    def fuse(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) → (B, 1, C): the first token attends to all tokens."""
        return self.attend(x[:, :1], x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        coarse = F.avg_pool2d(x.permute(0, 3, 1, 2), self.scale, self.scale, ceil_mode=True)  # (B, C, h, w)
        y = self.attend(x.reshape(B, H * W, C), coarse.flatten(2).transpose(1, 2))
        return y.reshape(B, H, W, C)
