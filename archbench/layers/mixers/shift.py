"""ShiftViT's partial shift: a zero-parameter, zero-FLOP token mixer."""
from __future__ import annotations

import ctypes
import functools
import math
import struct
import threading
from pathlib import Path

import torch
from torch import nn

from archbench.layers import native
from archbench.layers.layout import Layout
from archbench.registry import MIXERS
from archbench.errors import UsageError


def shift_groups(dim: int, ratio: float) -> int:
    """Channels per direction: floor(C·γ), which is C // n_div for γ = 1/n_div."""
    return int(math.floor(dim * ratio + 1e-6))


# --------------------------------------------------------------------------- the PyTorch-op form
#
# (On the CPU, dense (B, C, H, W) and channels-last images go to the C kernel instead, one
# call for the batch: ``shift_kernel.c``, below.) The output is written once, element by
# element, by strided copies out of the input and zero fills of only the border a shift
# opens — no zero fill of whole channels (the paper's Algorithm 1 zero-fills the whole output
# first; ``benchmarks/shift.py`` measures both).
#
# What keeps it a handful of long copies: a shift by one pixel is, in memory, a shift of the
# group's block by one stride. In contiguous (B, C, H, W), group k of an image is one block
# of n = g·H·W elements, and its left shift is the flat copy
# ``out[kn : (k+1)n - 1] = x[kn + 1 : (k+1)n]`` (up: by W elements) — one run per image
# instead of g·H runs of W - 1. What the flat copy carries across a row (channel) end lands
# exactly on the column (row) the shift opens, which is zeroed after it. Channels-last
# (B, H, W, C) is the same with pixels for elements: the left shift of group k moves the
# image's (H·W, g) channel slab by one pixel. Two groups' copies (or zero fills) go in one op
# where both fit one strided view: 5 ops in all for (B, C, H, W) — the left+right copy, its
# zero fill, the up+down copy, its zero fill, the copy of the rest — and 7 in channels-last,
# whose copies cannot pair. A plan, cached per shape and strides, lists the ops as
# (size, out_stride, out_offset, in_stride, in_offset), in_stride None meaning "zero-fill".

_NCHW, _NHWC = "nchw", "nhwc"


def _merge(ops: list[tuple]) -> list[tuple]:
    """Two ops of the same size and strides whose offsets (output and input) both grow from
    one to the other become one op with a size-2 dim after the batch dim; else they stay two."""
    first, second = sorted(ops, key=lambda op: op[2])
    (size, os_, oo, is_, io), (size2, os2, oo2, is2, io2) = first, second
    zero = is_ is None
    if size != size2 or os_ != os2 or is_ != is2 or (not zero and io2 <= io):
        return ops
    ins = None if zero else (is_[0], io2 - io, *is_[1:])
    return [((size[0], 2, *size[1:]), (os_[0], oo2 - oo, *os_[1:]), oo, ins, io)]


def _dense(sizes: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """Whether the dims (outermost first) are dense row-major; a size-1 dim's stride is free."""
    expected = 1
    for size, stride in zip(reversed(sizes), reversed(strides)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


@functools.lru_cache(maxsize=256)
def _plan(shape: tuple[int, ...], strides: tuple[int, ...], g: int, reverse: bool):
    """(output memory format, ops) writing ``shift(x)`` (``reverse``: the opposite shift, the
    gradient) for an input of this shape and strides into a dense output in the input's
    per-image layout; None when the images are neither dense NCHW nor dense NHWC."""
    B, C, H, W = shape
    if _dense((C, H, W), strides[1:]):
        layout, fmt = _NCHW, torch.contiguous_format
    elif _dense((H, W, C), (strides[2], strides[3], strides[1])):
        layout, fmt = _NHWC, torch.channels_last
    else:
        return None
    if B * C * H * W == 0:
        return fmt, ()
    sb_o, sb_i = C * H * W, strides[0]  # the input's images may lie apart (a slice of a wider batch)
    signs = (-1, 1, -1, 1) if reverse else (1, -1, 1, -1)  # src = dst + sign·step, along W (k < 2) or H
    ops = []
    for k0 in ((0, 2) if g else ()):
        copies, zeros = [], []
        for k in (k0, k0 + 1):
            sign, along_w = signs[k], k < 2
            if layout == _NCHW:  # group k is the block [k·n, (k+1)·n) of each image
                n, step = g * H * W, 1 if along_w else W
                lo = k * n
                dst, src = (lo, lo + step) if sign > 0 else (lo + step, lo)
                copies.append(((B, n - step), (sb_o, 1), dst, (sb_i, 1), src))
                if along_w:  # the opened column (W - 1 moving left, else 0) of each row of the group
                    zeros.append(((B, g * H), (sb_o, W), lo + (W - 1 if sign > 0 else 0), None, 0))
                else:  # the opened row (H - 1 moving up, else 0) of each channel of the group
                    zeros.append(((B, g, W), (sb_o, H * W, 1), lo + ((H - 1) * W if sign > 0 else 0), None, 0))
            else:  # NHWC: group k is channels [k·g, (k+1)·g) of each of the image's H·W pixels
                step = C if along_w else W * C  # one pixel / one row of pixels, in elements
                lo = k * g
                dst, src = (lo, lo + step) if sign > 0 else (lo + step, lo)
                copies.append(((B, H * W - (1 if along_w else W), g), (sb_o, C, 1), dst, (sb_i, C, 1), src))
                if along_w:
                    zeros.append(((B, H, g), (sb_o, W * C, 1), lo + ((W - 1) * C if sign > 0 else 0), None, 0))
                else:
                    zeros.append(((B, W, g), (sb_o, C, 1), lo + ((H - 1) * W * C if sign > 0 else 0), None, 0))
        ops += _merge(copies) + _merge(zeros)  # the zeros after the copies that run over the border
    if layout == _NCHW:  # the channels that stay
        ops.append(((B, (C - 4 * g) * H * W), (sb_o, 1), 4 * g * H * W, (sb_i, 1), 4 * g * H * W))
    else:
        ops.append(((B, H * W, C - 4 * g), (sb_o, C, 1), 4 * g, (sb_i, C, 1), 4 * g))
    return fmt, tuple(op for op in ops if all(s > 0 for s in op[0]))


def _shift_sliced(x: torch.Tensor, g: int, reverse: bool) -> torch.Tensor:
    """Any strides, and what ``torch.compile`` traces: the same writes as slices of (B, C, H, W)."""
    out = torch.empty_like(x)
    a, b, c, d = (slice(i * g, (i + 1) * g) for i in ((1, 0, 3, 2) if reverse else range(4)))
    out[:, a, :, :-1] = x[:, a, :, 1:]  # moves left
    out[:, a, :, -1:] = 0
    out[:, b, :, 1:] = x[:, b, :, :-1]  # moves right
    out[:, b, :, :1] = 0
    out[:, c, :-1, :] = x[:, c, 1:, :]  # moves up
    out[:, c, -1:, :] = 0
    out[:, d, 1:, :] = x[:, d, :-1, :]  # moves down
    out[:, d, :1, :] = 0
    out[:, 4 * g:] = x[:, 4 * g:]
    return out


KERNEL = Path(__file__).with_name("shift_kernel.c")

# torch.jit.is_tracing() is this C call behind two Python-level ones (is_scripting, which is False outside
# TorchScript); right after a stage's copy has passed through the caches those cost ~4 µs a shift
_is_tracing = getattr(torch._C, "_is_tracing", None) or torch.jit.is_tracing
_is_compiling = torch.compiler.is_compiling  # the same function object, which dynamo folds to True: one lookup fewer


@functools.lru_cache(maxsize=None)
def _native_fn():
    """The C kernel (``shift_kernel.c``) for dense (B, C, H, W) or channels-last images on the
    CPU, as a function of (x, out, B, C, H, W, g, element bytes, x's batch stride in bytes,
    reverse, threads, channels_last) — pointers as integers — that raises MemoryError when its
    border masks cannot be allocated; or None where it cannot be built
    (:mod:`archbench.layers.native`). Its Python entry where the library has one, else the
    same C function through ctypes."""
    module = native.load_module(KERNEL)
    return module.shift if module is not None else _ctypes_fn()


@functools.lru_cache(maxsize=None)
def _ctypes_fn():
    """:func:`_native_fn`'s function through ctypes (a library built without Python's headers)."""
    lib = native.load(KERNEL)
    if lib is None:
        return None
    fn = lib.archbench_shift_packed  # the twelve arguments as one block of int64:
    fn.argtypes = [ctypes.c_void_p]   # ctypes converts one argument instead of twelve
    fn.restype = ctypes.c_int  # 1: its masks could not be allocated
    pack = struct.Struct("=12q").pack_into
    blocks = threading.local()  # a block per thread: ctypes lets go of the GIL during the call

    def shift(*args: int) -> None:
        block = getattr(blocks, "block", None)
        if block is None:
            block = blocks.block = (ctypes.c_int64 * 12)()
        pack(block, 0, *args)
        if fn(block):
            raise MemoryError(f"shift: no memory for the border masks of a {args[4]}x{args[5]} map")

    return shift


def _native_call(fn, x: torch.Tensor, out: torch.Tensor, g: int, reverse: bool, channels_last: bool = False) -> None:
    """The C kernel ``fn`` (:func:`_native_fn`): x's dense (C, H, W) images (``channels_last``:
    (H, W, C)) into the dense ``out`` of the same layout."""
    B, C, H, W = x.shape
    es = x.element_size()
    fn(x.data_ptr(), out.data_ptr(), B, C, H, W, g, es, x.stride(0) * es, reverse, torch.get_num_threads(),
       channels_last)


def _native_shift(x: torch.Tensor, g: int, reverse: bool) -> torch.Tensor | None:
    """The shift (``reverse``: the opposite one) by the C kernel, one call for the batch, where
    it applies: a plain CPU tensor whose values are its bytes (no lazy negation or conjugation
    bit, which the PyTorch ops honour), outside a JIT trace, with dense (B, C, H, W) or
    channels-last images; else None."""
    # the fewest Python-level calls: at a 7x7 stage each µs is about 1 % of a copy
    if not (type(x) is torch.Tensor and x.is_cpu and not x.is_neg() and not x.is_conj() and not _is_tracing()
            and (fn := _native_fn()) is not None):
        return None
    try:
        xp = x.data_ptr()
    except RuntimeError:  # a tensor without storage of its own (torch.func's vmap wrappers): the ops
        return None
    B, C, H, W = x.shape
    channels_last = False
    # a dense batch (either layout) is told by one C call, not the Python loops over its strides below,
    # and empty_like keeps its strides (x.stride(0) costs 0.1 µs)
    if x.is_contiguous() or (channels_last := x.is_contiguous(memory_format=torch.channels_last)):
        out, batch_stride = torch.empty_like(x), C * H * W
    else:
        _, sc, sh, sw = strides = x.stride()
        if _dense((C, H, W), strides[1:]):  # dense images apart (a slice of a wider batch)
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
        elif _dense((H, W, C), (sh, sw, sc)):  # channels-last images apart, or a token grid's (H, W, C) view
            out, channels_last = torch.empty_like(x, memory_format=torch.channels_last), True
        else:
            return None
        batch_stride = strides[0]
    es = x.element_size()
    fn(xp, out.data_ptr(), B, C, H, W, g, es, batch_stride * es, reverse, torch.get_num_threads(), channels_last)
    return out


def _shift(x: torch.Tensor, g: int, reverse: bool = False, allow_native: bool = True) -> torch.Tensor:
    """The shift (``reverse``: the opposite one) without autograd: (B, C, H, W) → same
    shape; dense (B, C, H, W) or channels-last images give the same layout back.
    ``allow_native=False``: the PyTorch-op form even where the C kernel would run."""
    if allow_native and (out := _native_shift(x, g, reverse)) is not None:
        return out
    plan = _plan(x.shape, x.stride(), g, reverse)
    if plan is None:
        return _shift_sliced(x, g, reverse)
    fmt, ops = plan
    out = torch.empty_like(x, memory_format=fmt)
    base = x.storage_offset()
    for size, o_stride, o_off, i_stride, i_off in ops:
        view = out.as_strided(size, o_stride, o_off)
        if i_stride is None:
            view.zero_()
        else:
            view.copy_(x.as_strided(size, i_stride, base + i_off))
    return out


class _ShiftFunction(torch.autograd.Function):
    """The shift with its exact gradient, the opposite shift (written the same way) —
    what autograd would derive from the slice copies, without its per-slice nodes."""

    generate_vmap_rule = True  # torch.func's vmap (per-sample gradients): forward and backward are
                               # the shift itself, which runs under vmap on its PyTorch ops

    @staticmethod
    def forward(x: torch.Tensor, g: int, reverse: bool) -> torch.Tensor:
        return _shift(x, g, reverse)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.g, ctx.reverse = inputs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return partial_shift(grad, ctx.g, reverse=not ctx.reverse), None, None


def partial_shift(x: torch.Tensor, g: int, *, reverse: bool = False) -> torch.Tensor:
    """ShiftViT's shift of ``g`` channels per direction: (B, C, H, W) → (B, C, H, W), in the
    input's memory format (contiguous or channels-last). ``reverse`` shifts the other way
    (right, left, down, up: the gradient of the shift)."""
    if _is_compiling():
        return _shift_sliced(x, g, reverse)  # plain slices: the compiler fuses them, autograd included
    if x.requires_grad and torch.is_grad_enabled() and not _is_tracing():
        return _ShiftFunction.apply(x, g, reverse)
    # no graph to build (the backward's call too), or a trace (FLOP counters) that sees the copies
    out = _native_shift(x, g, reverse)
    return out if out is not None else _shift(x, g, reverse, allow_native=False)


@MIXERS.register("shift")
class Shift(nn.Module):
    """Partial shift (Wang et al., AAAI 2022). With g = floor(C·ratio) channels per
    direction: channels [0, g) move one pixel left, [g, 2g) right, [2g, 3g) up, [3g, 4g)
    down; pixels shifted out are dropped and the holes are zero; the other channels are
    copied. Applied inline (``residual = False``): ShiftViT's block is
    ``x = shift(x); x = x + MLP(norm(x))``. Input and output (B, C, H, W).

    Implementation (:func:`partial_shift`): one pass that writes each output element once,
    in the input's memory format (channels-last stays channels-last) — on the CPU one C call
    for the batch (``shift_kernel.c``), elsewhere a few long strided copies plus zero fills of
    only the opened border — and a backward that is the opposite shift written the same way
    (``benchmarks/shift.py`` compares both with a plain copy and with the paper's Algorithm 1).
    """

    layout = Layout.NCHW
    residual = False
    reads_prefix = False
    home_macro = "pyramid"  # ShiftViT (Swin's macro)

    def __init__(self, dim: int, *, heads: int, grid: tuple[int, int], ratio: float = 1 / 12):
        super().__init__()
        self.ratio = ratio
        self.g = shift_groups(dim, ratio)

    @staticmethod
    def check(dim: int, heads: int, grid, *, ratio: float) -> None:
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
        """(B, C, H, W) → (B, C, H, W), same memory format."""
        if x.requires_grad or _is_compiling():
            return partial_shift(x, self.g)
        # what partial_shift does without a graph to build, minus its two frames and two checks: at a 7x7
        # stage, 0-4 µs a call (1-3 % of a copy) in A/B runs, as the caches are cold after the stage's data
        out = _native_shift(x, self.g, False)
        return out if out is not None else _shift(x, self.g, allow_native=False)
