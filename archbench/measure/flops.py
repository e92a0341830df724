"""Multiply-accumulates (MACs) of one forward pass, from two counters that count attention.

Unit: one multiply-add is one MAC — fvcore's "flop", and what the papers call FLOPs
(DeiT-S: 4.6 G). ``count_macs(model, shape_or_tensor, backend="fvcore" | "ptflops")``.

Why not the counters as they come
---------------------------------
- Neither fvcore nor ptflops counts ``F.scaled_dot_product_attention`` (SDPA), which timm
  uses by default: fvcore reads DeiT-S as 4.25 instead of 4.61 GMACs. Both counters get a
  handle here for SDPA and each fused variant it may dispatch to
  (``_scaled_dot_product_flash_attention_for_cpu``, ``_scaled_dot_product_flash_attention``,
  ``_scaled_dot_product_efficient_attention``, ``_scaled_dot_product_cudnn_attention``,
  ``_scaled_dot_product_fused_attention_overrideable``) that counts exactly what the
  explicit ``q @ k.transpose(-2, -1)`` and ``attn @ v`` count: ``batch · Nq · Nk · (d_qk + d_v)``,
  batch being the product of the output's leading dimensions (q's, after broadcasting
  and grouped-query heads). Softmax and scaling count zero, as fvcore counts them in the
  explicit form; a causal mask does not halve the count (the explicit form does not either).
  With this, timm models with fused attention on give exactly the number they give with
  it off (``TIMM_FUSED_ATTN=0``, the reference table's setting).
- ``nn.MultiheadAttention`` (and ``nn.TransformerEncoderLayer``) in eval mode without
  gradients take a "fast path", one fused op (``aten::_native_multi_head_attention``)
  that neither counter counts — projections included. The fast path is switched off
  while counting (``torch.backends.mha.set_fastpath_enabled``, restored afterwards), so
  they run as linears + attention and are counted like any other attention.
- Bicubic resizing (``aten::upsample_bicubic2d``, CrossViT resizes its 240-pixel input to
  224 for the large-patch branch) is counted at 16 MACs per output element (its 4×4
  taps, as fvcore counts bilinear at 4 per output). fvcore counts it 0, so CrossViT reads
  2.4 M MACs (0.13 %) above the reference table, which was taken with fvcore as it comes.

fvcore (``backend="fvcore"``)
-----------------------------
``FlopCountAnalysis`` (a TorchScript trace) with the handles above added; everything else
is fvcore's own cost model: matmuls/linears/convolutions without bias adds, a norm 5 per
element with an affine (4 without), an eval BatchNorm 2, adaptive average pooling 1 per
input element, nearest/bilinear upsampling 1/4 per output element. Its warnings are
silenced; unsupported ops are reported in ``skipped`` instead.

ptflops (``backend="ptflops"``)
-------------------------------
``ptflops.get_model_complexity_info(..., backend='aten')``: an ATen ``TorchDispatchMode``
that, as it comes, counts only ``mm``/``bmm``/``addmm``/``convolution`` — with bias
additions, which are not multiply-adds — and nothing for norms, pooling or upsampling.
Through its ``custom_modules_hooks`` it gets here fvcore's cost model, op for op (bias
adds dropped, norms and BatchNorm per element, ``_adaptive_avg_pool2d``, upsampling,
``grid_sampler_2d``) plus the handles above, so the two counters differ only in what they
see (a trace of TorchScript ops versus the ATen ops actually dispatched), which is what
makes them a check on each other. Known difference: ``adaptive_avg_pool2d`` to 1×1
reaches ATen as ``mean``, which ptflops therefore counts 0 where fvcore counts one per
input element (C·H·W, ~1e-5 of a model).

ptflops itself reports neither which ops it skipped (only as printed warnings with
``verbose=True``) nor per-module numbers (only printed, for top-level children), swallows
exceptions (prints them and returns ``None``) and leaves forward hooks on the model's
children. So: a second dispatch mode around ptflops' records every op dispatched (the
ones ptflops counts are exactly those with a hook), every hook is wrapped to record its
op and the modules it ran in (``by_module``), the sum of the wrapped hooks is checked
against ptflops' total, the model is handed to ptflops inside a wrapper without
registered children (so nothing is left hooked on it), and a failure re-raises the
model's own exception.

What ``skipped`` holds
----------------------
``unsupported`` lists every op a counter saw and did not count (fvcore: what it reports as
unsupported — it never reports the shape/copy ops on its own ignore list; ptflops: every
dispatched op without a hook), with how many times. ``skipped`` is the same list without
the ops in ``ZERO_MAC_OPS``, which do no multiply-accumulate: data movement, shape and
creation ops; elementwise arithmetic, activations and softmax (counted 0 by the MAC
convention, in fvcore and in the papers, so that a fused elementwise op such as
``addcmul`` costs what its unfused spelling costs); and pure reductions (sum, mean,
average pooling, fold's overlap-add), which only add. Whatever else shows up in
``skipped`` — an unknown op, a vector norm, an antialiased resize — is compute the count
is missing. Ops handled above never appear in either list.
"""
from __future__ import annotations

import contextlib
import io
import math
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from archbench.measure.params import component_role
from archbench.errors import UsageError


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one forward pass, from one counter."""

    total: int | float  # MACs
    backend: str
    skipped: dict[str, int] = field(default_factory=dict)  # op → calls not counted that may cost MACs
    by_module: dict[str, float] = field(default_factory=dict)  # module name → MACs inside it ("" = total)
    unsupported: dict[str, int] = field(default_factory=dict)  # every op seen and not counted → calls
    by_op: dict[str, float] = field(default_factory=dict)  # op (as the counter names it) → MACs
    by_part: dict[str, float] = field(default_factory=dict)  # token_mixer / ffn / rest

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


# --------------------------------------------------------------------------- cost model

SDPA_OPS = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
            "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
            "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_fused_attention_overrideable")
BICUBIC_TAPS = 16  # MACs per output element of aten::upsample_bicubic2d


def sdpa_macs(q: Sequence[int], k: Sequence[int], v: Sequence[int], out: Sequence[int] | None = None) -> int:
    """QKᵀ + attn·V of an SDPA call from its shapes: q (..., Nq, d), k (..., Nk, d),
    v (..., Nk, dv), out (..., Nq, dv). The batch is the product of the output's leading
    dims (q's broadcast with k's, grouped-query heads expanded), q's if out is unknown."""
    lead = out[:-2] if out is not None and len(out) == len(q) else q[:-2]
    return math.prod(lead) * q[-2] * k[-2] * (q[-1] + v[-1])


# ops that do no multiply-accumulate (see the module docstring); names without "aten::"
# and without the in-place "_"
_DATA_OPS = """
view _unsafe_view reshape _reshape_alias as_strided alias permute transpose t expand expand_as
contiguous clone copy _to_copy to type_as detach lift_fresh flatten unflatten squeeze unsqueeze select
slice narrow index index_select gather masked_fill where cat stack split split_with_sizes chunk unbind
roll flip repeat repeat_interleave tile pad constant_pad_nd reflection_pad1d reflection_pad2d replication_pad1d
replication_pad2d im2col unfold pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle
empty empty_like empty_strided zeros zeros_like ones ones_like full full_like new_zeros new_empty
new_full new_ones arange scalar_tensor fill zero tril triu size numel Int ScalarImplicit NumToTensor
list tensor dropout feature_dropout alpha_dropout eq ne lt le gt ge floor_divide floordiv remainder
max min amax amin argmax argmin max_pool1d max_pool2d max_pool2d_with_indices adaptive_max_pool2d
""".split()
_ELEMENTWISE_OPS = """
add sub rsub mul div neg reciprocal addcmul addcdiv pow sqrt rsqrt exp log abs sign clamp clamp_min
clamp_max lerp erf relu relu6 gelu silu sigmoid tanh hardswish hardsigmoid hardtanh leaky_relu elu
mish softplus softmax _softmax _safe_softmax log_softmax _log_softmax
""".split()
_REDUCTION_OPS = "sum mean cumsum avg_pool1d avg_pool2d avg_pool3d col2im fold".split()
ZERO_MAC_OPS = frozenset(_DATA_OPS + _ELEMENTWISE_OPS + _REDUCTION_OPS)


def _base(op: str) -> str:
    name = op.split("::")[-1]
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def _may_cost(op: str) -> bool:
    return _base(op) not in ZERO_MAC_OPS


def _by_part(by_module: dict[str, float], total: float) -> dict[str, float]:
    """MACs of the outermost modules named as token mixers / FFNs (see params.ROLES)."""
    parts = {"token_mixer": 0.0, "ffn": 0.0}
    for name, macs in by_module.items():
        comps = name.split(".") if name else []
        if comps and component_role(comps[-1]) in parts and not any(map(component_role, comps[:-1])):
            parts[component_role(comps[-1])] += float(macs)
    return {**parts, "rest": float(total) - parts["token_mixer"] - parts["ffn"]}


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


# --------------------------------------------------------------------------- fvcore

def _import_fvcore():
    with warnings.catch_warnings():  # importing fvcore.nn scripts a loss: torch.jit.script's deprecation
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis, jit_handles
    return FlopCountAnalysis, jit_handles


def _fvcore_handles() -> dict[str, Callable]:
    _, jit_handles = _import_fvcore()
    elementwise_flop_counter, get_shape = jit_handles.elementwise_flop_counter, jit_handles.get_shape

    def sdpa(inputs: list, outputs: list) -> int:
        q, k, v = (get_shape(t) for t in inputs[:3])
        return sdpa_macs(q, k, v, get_shape(outputs[0]))

    return {**{f"aten::{op}": sdpa for op in SDPA_OPS},
            "aten::upsample_bicubic2d": elementwise_flop_counter(0, BICUBIC_TAPS)}


def _fvcore(model: nn.Module, x: torch.Tensor) -> MacCount:
    FlopCountAnalysis, _ = _import_fvcore()
    fca = FlopCountAnalysis(model, x)
    for op, handle in _fvcore_handles().items():
        fca.set_op_handle(op, handle)
    fca.tracer_warnings("none").uncalled_modules_warnings(False).unsupported_ops_warnings(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what is left (deprecations in the tracer) says nothing about the count
        total = fca.total()
    unsupported = dict(sorted(fca.unsupported_ops().items()))
    by_module = {k: float(v) for k, v in fca.by_module().items()}
    return MacCount(total=_number(total), backend="fvcore",
                    skipped={k: v for k, v in unsupported.items() if _may_cost(k)},
                    by_module=by_module, unsupported=unsupported,
                    by_op={k: float(v) for k, v in fca.by_operator().items()},
                    by_part=_by_part(by_module, total))


# --------------------------------------------------------------------------- ptflops

def _ptflops_costs() -> dict[Any, Callable[[tuple, tuple], int]]:
    """ATen op → MACs(args, outputs): fvcore's cost model for what ptflops dispatches."""
    aten = torch.ops.aten

    def addmm(a: tuple, o: tuple) -> int:  # bias, x (n, k), w (k, m): no bias adds
        return a[1].shape[0] * a[1].shape[1] * a[2].shape[1]

    def conv(a: tuple, o: tuple) -> int:  # x, w, bias, stride, padding, dilation, transposed, ...
        x, w, transposed = a[0], a[1], a[6]
        return x.shape[0] * math.prod(w.shape) * math.prod((x if transposed else o[0]).shape[2:])

    def norm(affine_index: int) -> Callable:  # fvcore's norm_flop_counter
        def count(a: tuple, o: tuple) -> int:
            affine = len(a) > affine_index and a[affine_index] is not None
            return a[0].numel() * (5 if affine else 4)
        return count

    def batch_norm(training_index: int) -> Callable:  # fvcore's batchnorm_flop_jit
        def count(a: tuple, o: tuple) -> int:
            affine = a[1] is not None
            if training_index >= 0 and a[training_index]:
                return a[0].numel() * (5 if affine else 4)
            return a[0].numel() * (2 if affine else 1)
        return count

    def legit(a: tuple, o: tuple) -> int:  # _native_batch_norm_legit: with or without running stats
        return batch_norm(5 if len(a) == 8 else 3)(a, o)

    def per_output(scale: int) -> Callable:
        return lambda a, o: o[0].numel() * scale

    def sdpa(a: tuple, o: tuple) -> int:
        return sdpa_macs(a[0].shape, a[1].shape, a[2].shape, o[0].shape)

    costs: dict[str, Callable] = {
        "addmm": addmm, "convolution": conv, "_convolution": conv,
        "native_layer_norm": norm(2), "native_group_norm": norm(1),
        "native_batch_norm": batch_norm(5), "cudnn_batch_norm": batch_norm(5), "_native_batch_norm_legit": legit,
        "_native_batch_norm_legit_no_training": batch_norm(-1),
        "_adaptive_avg_pool2d": lambda a, o: a[0].numel(),
        "upsample_nearest2d": per_output(1), "upsample_bilinear2d": per_output(4),
        "upsample_bicubic2d": per_output(BICUBIC_TAPS), "grid_sampler_2d": per_output(4),
        **{op: sdpa for op in SDPA_OPS},
    }
    return {getattr(aten, k): v for k, v in costs.items() if hasattr(aten, k)}


def _op_name(packet: Any) -> str:
    return getattr(packet, "_qualified_op_name", None) or f"aten::{getattr(packet, '__name__', packet)}"


class _Unhooked(nn.Module):
    """Calls the model without registering it as a child: ptflops hooks every child of the
    module it is given and never removes those hooks. Keeps the model's own exception."""

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "inner", model)
        self.error: BaseException | None = None

    def forward(self, x: torch.Tensor) -> Any:
        try:
            return self.inner(x)
        except BaseException as e:  # ptflops swallows it; count_macs re-raises it
            self.error = e
            raise


def _ptflops(model: nn.Module, x: torch.Tensor) -> MacCount:
    from ptflops import get_model_complexity_info
    from ptflops.aten_ops import ATEN_OPS_MAPPING
    from torch.utils._python_dispatch import TorchDispatchMode

    by_op: Counter = Counter()
    by_module: Counter = Counter()
    stack: list[str] = []

    def recorded(packet: Any, cost: Callable) -> Callable:
        name = _op_name(packet)

        def hook(args: tuple, out: tuple) -> int:
            n = cost(args, out)
            by_op[name] += n
            for m in dict.fromkeys(stack):  # a module on the stack twice (recursion) counts once
                by_module[m] += n
            return n
        return hook

    costs = {**ATEN_OPS_MAPPING, **_ptflops_costs()}  # ptflops' own mm/bmm, ours for the rest
    hooks = {packet: recorded(packet, cost) for packet, cost in costs.items()}

    class Seen(TorchDispatchMode):  # runs under ptflops' mode: sees every op it dispatches
        def __init__(self):
            super().__init__()
            self.ops: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func._overloadpacket] += 1
            return func(*args, **(kwargs or {}))

    def enter(name: str) -> Callable:
        def pre_hook(module: nn.Module, args: Any) -> None:
            stack.append(name)
        return pre_hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    handles = []
    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(enter(name)))
        handles.append(mod.register_forward_hook(leave, always_call=True))
    call = _Unhooked(model)
    out, err = io.StringIO(), io.StringIO()
    try:
        with Seen() as seen, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            macs, _ = get_model_complexity_info(
                call, tuple(x.shape), print_per_layer_stat=False, as_strings=False,
                input_constructor=lambda _: x, ost=out, verbose=False, custom_modules_hooks=hooks,
                backend="aten")
    finally:
        for h in handles:
            h.remove()
    if call.error is not None:
        raise call.error
    if macs is None:
        raise RuntimeError(f"ptflops failed:\n{out.getvalue()}{err.getvalue()}".strip())
    sys.stdout.write(out.getvalue())  # whatever the model printed
    sys.stderr.write(err.getvalue())
    if macs != sum(by_op.values()):
        raise RuntimeError(f"ptflops counted {macs} MACs but its hooks {sum(by_op.values())}: "
                           "ptflops' aten backend has changed; archbench.measure.flops needs a look")
    unsupported = dict(sorted(Counter({_op_name(p): n for p, n in seen.ops.items() if p not in hooks}).items()))
    by_module_f = {k: float(v) for k, v in by_module.items()}
    return MacCount(total=_number(macs), backend="ptflops",
                    skipped={k: v for k, v in unsupported.items() if _may_cost(k)},
                    by_module=by_module_f, unsupported=unsupported,
                    by_op={k: float(v) for k, v in sorted(by_op.items())},
                    by_part=_by_part(by_module_f, macs))


# --------------------------------------------------------------------------- entry point

BACKENDS: dict[str, Callable[[nn.Module, torch.Tensor], MacCount]] = {"fvcore": _fvcore, "ptflops": _ptflops}


def count_macs(model: nn.Module, input_shape: torch.Tensor | Sequence[int] = (1, 3, 224, 224), *,
               backend: str = "fvcore") -> MacCount:
    """MACs of one forward pass of ``model`` on ``input_shape`` — a shape, batch included
    (a random input is made on the model's device and dtype), or an input tensor.

    Runs in eval mode under ``torch.no_grad`` with PyTorch's fused-MHA fast path off, and
    restores every module's training flag and the fast-path setting afterwards. ``backend``:
    ``"fvcore"`` or ``"ptflops"`` (see the module docstring for what each counts)."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown FLOP counter {backend!r}; known: {', '.join(BACKENDS)}")
    if isinstance(input_shape, torch.Tensor):
        x = input_shape
    else:
        ref = next(model.parameters(), None)
        if ref is None:
            ref = next(model.buffers(), None)
        x = torch.randn(*input_shape, device=ref.device if ref is not None else "cpu",
                        dtype=ref.dtype if ref is not None and ref.is_floating_point() else torch.float32)
    training = [(m, m.training) for m in model.modules()]  # per module: a frozen BN stays in eval
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            return BACKENDS[backend](model, x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for m, flag in training:
            m.training = flag
