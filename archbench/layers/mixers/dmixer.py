"""TransXNet's D-Mixer: IDConv on half the channels, OSRA on the other half, then STE."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from archbench.layers.layout import Layout
from archbench.registry import MIXERS
from archbench.errors import UsageError


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1,
            act: bool = False) -> nn.Sequential:
    """conv (no bias) → BN (→ GELU): mmcv's ConvModule as TransXNet uses it."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.GELU()) if act else nn.Sequential(*layers)


class IDConv(nn.Module):
    """Input-dependent depthwise conv (TransXNet's DynamicConv2d): from the K×K-pooled
    input, predict softmax weights over G learned kernels (G, C, K, K); their mix is each
    sample's own depthwise kernel, and likewise a bias from the globally pooled input.
    Applied as one grouped conv over the batch. (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, dim: int, *, kernel: int, groups: int, reduction: int = 4):
        super().__init__()
        self.K, self.G = kernel, groups
        self.weight = nn.Parameter(torch.empty(groups, dim, kernel, kernel))
        self.pool = nn.AdaptiveAvgPool2d(kernel)
        self.proj = nn.Sequential(conv_bn(dim, dim // reduction, act=True),
                                  nn.Conv2d(dim // reduction, dim * groups, 1))
        self.bias = nn.Parameter(torch.empty(groups, dim))
        trunc_normal_(self.weight, std=0.02)
        trunc_normal_(self.bias, std=0.02)

    def dynamic_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample depthwise kernels (B*C, 1, K, K) and biases (B*C,)."""
        B, C, H, W = x.shape
        K, G = self.K, self.G
        scale = self.proj(self.pool(x)).reshape(B, G, C, K, K).softmax(dim=1)
        weight = (scale * self.weight.unsqueeze(0)).sum(dim=1).reshape(B * C, 1, K, K)
        scale = self.proj(x.mean(dim=(2, 3), keepdim=True)).reshape(B, G, C).softmax(dim=1)
        bias = (scale * self.bias.unsqueeze(0)).sum(dim=1).flatten()
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        weight, bias = self.dynamic_params(x)
        x = F.conv2d(x.reshape(1, B * C, H, W), weight, bias, padding=self.K // 2, groups=B * C)
        return x.reshape(B, C, H, W)


class OSRA(nn.Module):
    """Overlapping spatial-reduction attention: queries at full resolution; keys and values
    from an overlapping strided depthwise reduction (plus a local 3x3 refinement); a learned
    relative position bias (1, heads, N, N_reduced), bicubically resized when the grid
    differs from the one it was built for. (B, C, H, W) → (B, C, H, W)."""

    def __init__(self, dim: int, *, heads: int, grid: tuple[int, int], sr_ratio: int, rel_pos: bool):
        super().__init__()
        self.heads, self.sr_ratio = heads, sr_ratio
        self.q = nn.Conv2d(dim, dim, 1)
        self.kv = nn.Conv2d(dim, dim * 2, 1)
        if sr_ratio > 1:
            k = sr_ratio + 3
            self.sr = nn.Sequential(conv_bn(dim, dim, k, sr_ratio, k // 2, groups=dim, act=True),
                                    conv_bn(dim, dim, 1, groups=dim))
        else:
            self.sr = nn.Identity()
        self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        H, W = grid
        n_red = math.ceil(H / sr_ratio) * math.ceil(W / sr_ratio)
        self.rel_pos = nn.Parameter(torch.zeros(1, heads, H * W, n_red)) if rel_pos else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        d = C // self.heads
        q = self.q(x).reshape(B, self.heads, d, H * W).transpose(-1, -2)  # (B, h, N, d)
        kv = self.sr(x)
        kv = self.local_conv(kv) + kv
        k, v = self.kv(kv).chunk(2, dim=1)
        k = k.reshape(B, self.heads, d, -1).transpose(-1, -2)  # (B, h, M, d)
        v = v.reshape(B, self.heads, d, -1).transpose(-1, -2)  # (B, h, M, d)
        bias = self.rel_pos
        if bias is not None and bias.shape[2:] != (q.shape[2], k.shape[2]):
            bias = F.interpolate(bias, size=(q.shape[2], k.shape[2]), mode="bicubic", align_corners=False)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # bias is added to QKᵀ/√d
        return x.transpose(-1, -2).reshape(B, C, H, W)


@MIXERS.register("dmixer")
class DMixer(nn.Module):
    """TransXNet's D-Mixer (HybridTokenMixer): channels split in half; IDConv on the first,
    OSRA on the second; concatenated; then the squeezed token enhancer (STE: dw3x3, GELU,
    BN, 1x1 to max(16, C/reduction), GELU, BN, 1x1 back, BN) with a residual.
    Names follow the official code (``local_unit``, ``global_unit``, ``proj``).
    (B, C, H, W) → (B, C, H, W); ``heads`` are OSRA's, over C/2 channels."""

    layout = Layout.NCHW
    residual = True
    reads_prefix = False
    home_macro = "pyramid"  # TransXNet

    def __init__(self, dim: int, *, heads: int, grid: tuple[int, int], kernel: int = 7, groups: int = 2,
                 sr_ratio: int = 1, reduction: int = 8, rel_pos: bool = True):
        super().__init__()
        half = dim // 2
        self.local_unit = IDConv(half, kernel=kernel, groups=groups)
        self.global_unit = OSRA(half, heads=heads, grid=grid, sr_ratio=sr_ratio, rel_pos=rel_pos)
        inner = max(16, dim // reduction)
        self.proj = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(), nn.BatchNorm2d(dim),
            nn.Conv2d(dim, inner, 1), nn.GELU(), nn.BatchNorm2d(inner),
            nn.Conv2d(inner, dim, 1), nn.BatchNorm2d(dim))

    @staticmethod
    def stage_options(index: int, n_stages: int, macro: str) -> dict:
        """On a pyramid, OSRA's spatial reduction shrinks with the map: TransXNet's 8, 4, 2, 1."""
        return {"sr_ratio": 2 ** (n_stages - 1 - index)} if macro == "pyramid" else {}

    @staticmethod
    def check(dim: int, heads: int, grid, *, kernel: int, groups: int, sr_ratio: int, reduction: int,
              rel_pos: bool) -> None:
        if dim % 2 or dim < 8:
            raise UsageError(f"dmixer: dim={dim} must be even and >= 8 (it is split in half, and IDConv "
                             "squeezes a half by 4)")
        if (dim // 2) % heads:
            raise UsageError(f"dmixer: heads={heads} must divide dim/2={dim // 2} (OSRA runs on half the channels)")
        if groups < 2:
            raise UsageError(f"dmixer: groups={groups} must be >= 2 (IDConv mixes G kernels)")
        if kernel < 1 or kernel % 2 == 0:
            raise UsageError(f"dmixer: kernel={kernel} must be odd")
        if sr_ratio < 1 or reduction < 1:
            raise UsageError(f"dmixer: sr_ratio={sr_ratio} and reduction={reduction} must be >= 1")

    def tie_to(self, first: "DMixer") -> None:
        """Share the stage's one relative position bias (TransXNet keeps one per stage)."""
        if first.global_unit.rel_pos is not None:
            self.global_unit.rel_pos = first.global_unit.rel_pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        x = torch.cat((self.local_unit(x1), self.global_unit(x2)), dim=1)
        return self.proj(x) + x
