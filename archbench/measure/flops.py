"""FLOP counting that counts attention: fvcore and ptflops, both reported as MACs.

Both counters count one multiply-add as one operation (what the papers call FLOPs) and
follow fvcore's conventions for the rest (a norm costs 5 per element with an affine, an
eval-mode BatchNorm 2, adaptive average pooling 1 per input element).
Out of the box neither counts ``F.scaled_dot_product_attention`` (so DeiT-S reads 4.25
instead of 4.61 GMACs) and ptflops' default backend also misses matmuls and functional
convolutions. Here both get a handle for the fused attention op that counts what the
explicit matmuls would: QKᵀ and attn·V, B·h·Nq·Nk·(d_qk + d_v); softmax and scaling count
zero, as fvcore counts them for the explicit form. ptflops runs with ``backend='aten'``
(out of the box it counts only mm/addmm/bmm/matmul/convolution: norms and pooling get
fvcore's costs here, and its bias additions in addmm and convolution are dropped, since a
bias add is not a multiply-add and fvcore does not count it). The two counters see the
model differently — fvcore traces TorchScript ops, ptflops intercepts ATen dispatch — so
they check each other's coverage. Every op a counter saw but did not count is listed
in ``skipped`` with how often it ran.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one forward pass, from one counter."""

    total: float
    backend: str
    skipped: dict[str, int] = field(default_factory=dict)  # op → calls not counted
    by_module: dict[str, float] = field(default_factory=dict)  # top-level module → MACs
    by_op: dict[str, float] = field(default_factory=dict)
    by_part: dict[str, float] = field(default_factory=dict)  # token_mixer / ffn / rest (fvcore)

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def _sdpa_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int]) -> int:
    *lead, nq, d = q_shape
    nk, dv = k_shape[-2], v_shape[-1]
    return math.prod(lead) * nq * nk * (d + dv)


# ops that cost no multiply-adds, left out of ``skipped`` so it lists only real omissions
FREE_OPS = {
    "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div", "aten::neg", "aten::zeros_like",
    "aten::empty_like", "aten::copy_", "aten::fill_", "aten::zero_", "aten::softmax", "aten::gelu", "aten::relu",
    "aten::relu_", "aten::silu", "aten::dropout", "aten::cat", "aten::chunk", "aten::split", "aten::split_with_sizes",
    "aten::expand", "aten::reshape", "aten::view", "aten::permute", "aten::transpose", "aten::flatten",
    "aten::unbind", "aten::slice", "aten::select", "aten::contiguous", "aten::unsqueeze", "aten::squeeze",
    "aten::size", "aten::mean", "aten::sum", "aten::max", "aten::rsub", "aten::addcmul", "aten::im2col",
    "aten::col2im", "aten::unfold", "aten::fold", "aten::avg_pool2d", "aten::zeros", "aten::ones", "aten::full",
    "aten::clone", "aten::detach", "aten::upsample_bicubic2d", "aten::pad", "aten::constant_pad_nd",
    "aten::new_zeros", "aten::stack", "aten::to", "aten::type_as", "aten::scalarimplicit", "aten::int",
    "aten::floordiv", "aten::numtensor", "aten::list", "aten::tensor", "aten::empty", "aten::arange",
    "aten::t", "aten::lift_fresh", "aten::_unsafe_view", "aten::_softmax", "aten::_safe_softmax", "aten::alias",
}


def _fvcore_analysis(model: nn.Module, x: torch.Tensor):
    """fvcore's FlopCountAnalysis with the fused-attention handles, warnings silenced."""
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

    def sdpa(inputs: list, outputs: list) -> int:
        return _sdpa_macs(get_shape(inputs[0]), get_shape(inputs[1]), get_shape(inputs[2]))

    fca = FlopCountAnalysis(model, x)
    for op in ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
               "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_flash_attention"):
        fca.set_op_handle(op, sdpa)
    fca.tracer_warnings("none").uncalled_modules_warnings(False).unsupported_ops_warnings(False)
    return fca


def _fvcore(model: nn.Module, x: torch.Tensor) -> MacCount:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's tracer warnings say nothing about the count
        fca = _fvcore_analysis(model, x)
        total = fca.total()
    skipped = {k: v for k, v in fca.unsupported_ops().items() if k.lower() not in FREE_OPS}
    modules = fca.by_module()
    by_module = {k: float(v) for k, v in modules.items() if k and "." not in k}
    # blocks name their parts ``mixer`` and ``ffn``; those subtrees never nest in each other
    mixer = float(sum(v for k, v in modules.items() if k.endswith("mixer")))
    ffn = float(sum(v for k, v in modules.items() if k.endswith("ffn")))
    return MacCount(float(total), "fvcore", dict(sorted(skipped.items())), by_module,
                    {k: float(v) for k, v in fca.by_operator().items()},
                    {"token_mixer": mixer, "ffn": ffn, "rest": float(total) - mixer - ffn})


def _ptflops(model: nn.Module, x: torch.Tensor) -> MacCount:
    from ptflops.aten_engine import FlopCounterMode

    aten = torch.ops.aten

    def sdpa(args: tuple, out: tuple) -> int:
        return _sdpa_macs(args[0].shape, args[1].shape, args[2].shape)

    def addmm(args: tuple, out: tuple) -> int:  # bias adds are not multiply-adds
        return math.prod(args[1].shape) * args[2].shape[-1]

    def conv(args: tuple, out: tuple) -> int:
        x, w, transposed = args[0], args[1], args[6]
        return x.shape[0] * math.prod(w.shape) * math.prod((x if transposed else out[0]).shape[2:])

    def norm(affine_index: int, eval_bn: bool = False):
        def count(args: tuple, out: tuple) -> int:  # fvcore's conventions for norms
            affine = len(args) > affine_index and args[affine_index] is not None
            if eval_bn and not args[5]:  # native_batch_norm(..., training, ...) in eval
                return args[0].numel() * (2 if affine else 1)
            return args[0].numel() * (5 if affine else 4)
        return count

    def bn_eval(args: tuple, out: tuple) -> int:
        return args[0].numel() * (2 if args[1] is not None else 1)

    hooks = {aten.addmm: addmm, aten.convolution: conv, aten._convolution: conv,
             aten.native_batch_norm: norm(1, eval_bn=True), aten.native_layer_norm: norm(2),
             aten.native_group_norm: norm(1), aten._adaptive_avg_pool2d: lambda a, o: a[0].numel()}
    if hasattr(aten, "_native_batch_norm_legit_no_training"):
        hooks[aten._native_batch_norm_legit_no_training] = bn_eval
    hooks.update({getattr(aten, n): sdpa for n in (
        "scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention") if hasattr(aten, n)})
    skipped: Counter = Counter()

    class Mode(FlopCounterMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            packet = func._overloadpacket
            if packet not in self.all_ops:
                name = f"aten::{packet.__name__}"
                if name.lower() not in FREE_OPS:
                    skipped[name] += 1
            return super().__torch_dispatch__(func, types, args, kwargs)

    mode = Mode(None, verbose=False, print_per_layer_stat=False,
                output_params={"print_params": {}, "serialize_params": {}}, custom_hooks=hooks)
    with mode:
        model(x)
    by_op = {f"aten::{k.__name__}": float(v) for k, v in mode.flop_counts["Global"].items()}
    return MacCount(float(mode.complexity), "ptflops", dict(sorted(skipped.items())), {}, by_op)


BACKENDS = {"fvcore": _fvcore, "ptflops": _ptflops}


def count_macs(model: nn.Module, inputs: torch.Tensor | Sequence[int] = (1, 3, 224, 224), *,
               backend: str = "fvcore") -> MacCount:
    """MACs of one forward pass of ``model`` on ``inputs`` (a tensor or an input shape),
    in eval mode without gradients; the model's training flag is restored."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown FLOP counter {backend!r}; known: {', '.join(BACKENDS)}")
    if isinstance(inputs, torch.Tensor):
        x = inputs
    else:
        p = next(model.parameters(), None)
        x = torch.randn(*inputs, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None else torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return BACKENDS[backend](model, x)
    finally:
        model.train(was_training)
