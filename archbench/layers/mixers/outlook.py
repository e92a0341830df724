"""VOLO's outlook attention."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archbench.layers.layout import Layout
from archbench.registry import MIXERS
from archbench.errors import UsageError


@MIXERS.register("outlook")
class OutlookAttention(nn.Module):
    """Outlook attention (Yuan et al., 2021): at every ``stride``-pooled position a linear
    layer predicts, per head, a (K²×K²) attention from the pooled centre token alone; it
    weights the K×K window of values around that position, and the windows are folded back
    (overlaps summed). Same parameters, names and ops as timm's ``OutlookAttention``
    (``v``, ``attn``, ``proj``; unfold/fold). Input and output (B, H, W, C)."""

    layout = Layout.NHWC
    residual = True
    reads_prefix = False
    home_macro = "two-stage"  # VOLO

    def __init__(self, dim: int, *, heads: int, grid: tuple[int, int], kernel: int = 3, padding: int = 1,
                 stride: int = 2, qkv_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.heads, self.kernel, self.padding, self.stride = heads, kernel, padding, stride
        self.scale = (dim // heads) ** -0.5
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn = nn.Linear(dim, kernel ** 4 * heads)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.pool = nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True)

    @staticmethod
    def check(dim: int, heads: int, grid, *, kernel: int, padding: int, stride: int, **_) -> None:
        if dim % heads:
            raise UsageError(f"outlook: heads={heads} does not divide dim={dim}")
        if kernel < 1 or kernel % 2 == 0:
            raise UsageError(f"outlook: kernel={kernel} must be odd and >= 1")
        if stride < 1 or padding < 0 or padding > kernel // 2:
            raise UsageError(f"outlook: stride={stride} must be >= 1 and padding={padding} in [0, kernel//2]")
        H, W = grid
        for n in (H, W):
            if (n + 2 * padding - kernel) // stride + 1 != math.ceil(n / stride):
                raise UsageError(f"outlook: kernel={kernel}, padding={padding}, stride={stride} do not tile "
                                 f"a {H}x{W} grid; use padding=kernel//2")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        K, heads = self.kernel, self.heads
        h, w = math.ceil(H / self.stride), math.ceil(W / self.stride)
        v = self.v(x).permute(0, 3, 1, 2)  # (B, C, H, W)
        v = F.unfold(v, K, padding=self.padding, stride=self.stride)  # (B, C*K*K, h*w)
        v = v.reshape(B, heads, C // heads, K * K, h * w).permute(0, 1, 4, 3, 2)  # (B, heads, hw, KK, d)
        a = self.pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, h, w, C)
        a = self.attn(a).reshape(B, h * w, heads, K * K, K * K).permute(0, 2, 1, 3, 4)  # (B, heads, hw, KK, KK)
        a = self.attn_drop((a * self.scale).softmax(dim=-1))
        x = (a @ v).permute(0, 1, 4, 3, 2).reshape(B, C * K * K, h * w)
        x = F.fold(x, output_size=(H, W), kernel_size=K, padding=self.padding, stride=self.stride)
        return self.proj_drop(self.proj(x.permute(0, 2, 3, 1)))  # (B, H, W, C)
