"""Stems: pixels → the first feature map, (B, C, H/p, W/p), p = ``stem.patch_size``.

Each stem is a factory ``(stem_spec, in_chans, dim, norm) -> nn.Module`` where ``norm`` makes
a channels-first norm of a given width; a stem can declare ``check(stem_spec)``.
Inner names follow the reference code (``proj``, ``conv``) so checkpoint keys map simply.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from archbench.registry import STEMS
from archbench.errors import UsageError


class PatchStem(nn.Module):
    """Non-overlapping p×p patches by one conv (ViT, CrossViT, ShiftViT), optionally normed."""

    def __init__(self, spec, in_chans: int, dim: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        p = spec.patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=p, stride=p)
        self.norm = norm(dim) if spec.norm else nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x))


class ConvStem(nn.Module):
    """Overlapping conv (kernel 2p-1, stride p, padding p-1, no bias) + BatchNorm (TransXNet)."""

    def __init__(self, spec, in_chans: int, dim: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        p = spec.patch_size
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, dim, kernel_size=2 * p - 1, stride=p, padding=p - 1, bias=False),
            nn.BatchNorm2d(dim))

    def forward(self, x):
        return self.proj(x)


class DaggerStem(nn.Module):
    """CrossViT-† multi-conv patch embedding: conv7/4, ReLU, conv3, ReLU, conv3.

    The published strides cover patch 12 (4·3·1) and 16 (4·2·2); other patch sizes that are
    a multiple of 4 use strides 4·(p/4)·1 with the same kernels.
    """

    def __init__(self, spec, in_chans: int, dim: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        p = spec.patch_size
        if p == 16:
            s2, k2, pad2, s3 = 2, 3, 1, 2
        else:
            s2, k2, pad2, s3 = p // 4, 3, (0 if p // 4 == 3 else 1), 1
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, dim // 4, kernel_size=7, stride=4, padding=3),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // 4, dim // 2, kernel_size=k2, stride=s2, padding=pad2),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // 2, dim, kernel_size=3, stride=s3, padding=1))

    @staticmethod
    def check(spec) -> None:
        p = spec.patch_size
        if p % 4 or (p != 16 and p // 4 > 3):
            raise UsageError(f"dagger stem: patch_size {p} is not supported; use 4, 8, 12 or 16")

    def forward(self, x):
        return self.proj(x)


class VoloStem(nn.Module):
    """VOLO: conv7/2 + BN + ReLU, two conv3 + BN + ReLU (width ``hidden``), then a
    (p/2)×(p/2) patch conv: total stride p."""

    def __init__(self, spec, in_chans: int, dim: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        h = spec.hidden
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, h, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(h), nn.ReLU(inplace=True),
            nn.Conv2d(h, h, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(h), nn.ReLU(inplace=True),
            nn.Conv2d(h, h, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(h), nn.ReLU(inplace=True))
        k = spec.patch_size // 2
        self.proj = nn.Conv2d(h, dim, kernel_size=k, stride=k)

    @staticmethod
    def check(spec) -> None:
        if spec.patch_size % 2:
            raise UsageError(f"volo stem: patch_size must be even (stride 2 conv, then a "
                             f"patch conv), got {spec.patch_size}")

    def forward(self, x):
        return self.proj(self.conv(x))


STEMS.register("patch")(PatchStem)
STEMS.register("conv")(ConvStem)
STEMS.register("dagger")(DaggerStem)
STEMS.register("volo")(VoloStem)
