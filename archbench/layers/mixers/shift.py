"""ShiftViT's partial shift: a zero-parameter, zero-FLOP token mixer."""
from __future__ import annotations

import math

import torch
from torch import nn

from archbench.layers.layout import Layout
from archbench.registry import MIXERS
from archbench.errors import UsageError


def shift_groups(dim: int, ratio: float) -> int:
    """Channels per direction: floor(C·γ), which is C // n_div for γ = 1/n_div."""
    return int(math.floor(dim * ratio + 1e-6))


@MIXERS.register("shift")
class Shift(nn.Module):
    """Partial shift (Wang et al., AAAI 2022). With g = floor(C·ratio) channels per
    direction: channels [0, g) move one pixel left, [g, 2g) right, [2g, 3g) up, [3g, 4g)
    down; pixels shifted out are dropped and the holes are zero; the other channels are
    copied. Applied inline (``residual = False``): ShiftViT's block is
    ``x = shift(x); x = x + MLP(norm(x))``. Input and output (B, C, H, W).

    Implementation: zero only the 4g shifted channels (a contiguous block per image), then
    slice copies — less memory traffic than the paper's Algorithm 1, which zero-fills the
    whole output before overwriting most of it (``benchmarks/shift.py`` measures both).
    """

    layout = Layout.NCHW
    residual = False
    reads_prefix = False

    def __init__(self, dim: int, *, heads: int, grid: tuple[int, int], ratio: float = 1 / 12):
        super().__init__()
        self.ratio = ratio
        self.g = shift_groups(dim, ratio)

    @staticmethod
    def check(dim: int, heads: int, grid, ratio: float = 1 / 12) -> None:
        if not 0 < ratio <= 0.25:
            raise UsageError(f"shift: ratio={ratio!r} must be in (0, 1/4] (the fraction of channels "
                             "moved in each of the four directions)")
        if shift_groups(dim, ratio) < 1:
            smallest = math.ceil((1 - 1e-6) / ratio)  # the smallest dim with floor(dim·ratio + 1e-6) >= 1
            while shift_groups(smallest, ratio) < 1:  # guard against float rounding in the division
                smallest += 1
            raise UsageError(f"shift: ratio={ratio:.4g} of dim={dim} moves no channel; use dim >= "
                             f"{smallest} or a ratio >= {1 / dim:.4g}")

    def extra_repr(self) -> str:
        return f"ratio={self.ratio:.4g}, channels_per_direction={self.g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.g
        out = torch.empty_like(x)
        out[:, :4 * g].zero_()
        a, b, c, d = (slice(i * g, (i + 1) * g) for i in range(4))
        out[:, a, :, :-1] = x[:, a, :, 1:]  # left
        out[:, b, :, 1:] = x[:, b, :, :-1]  # right
        out[:, c, :-1, :] = x[:, c, 1:, :]  # up
        out[:, d, 1:, :] = x[:, d, :-1, :]  # down
        out[:, 4 * g:] = x[:, 4 * g:]
        return out
