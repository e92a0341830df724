"""Our shift against a plain memory copy of the same tensor (the floor for any zero-FLOP
mixer) and against the ShiftViT paper's Algorithm 1 (zeros + slice copies), forward and
backward, at ShiftViT-T's stage shapes, in contiguous and channels-last memory.

Forward: one call on an input without grad (``torch.inference_mode``); copy = ``x.clone()``.
Backward: ``torch.autograd.grad(y, x, dy, retain_graph=True)`` on the retained graph of one
forward, so a call is the autograd engine plus the op's backward. The copy baseline is
measured the same way: a copy as a custom autograd function (as ours is) whose backward is a
plain ``dy.clone()``. For scale: ``clone_bwd`` is the same call through ``x.clone()``, whose
backward hands ``dy`` on without copying (the engine's own cost), and a plain ``dy.clone()``
costs what ``copy_us`` says. Interleaved rounds (order reversed every other round), each a
block of calls of about ``--block-ms``; median of the per-call means; fixed threads. On CUDA
(``--device cuda``) each block ends with a device synchronisation, so a call's time is its
share of the GPU work, launches included; ``--compiled`` then times inductor's Triton kernels
forward and backward. Writes results/benchmarks/shift.{csv,md}.

    python benchmarks/shift.py [--rounds 61] [--block-ms 4] [--formats contiguous,channels_last] [--processes 3]

``--processes K`` runs the whole measurement in K fresh processes, one after another, and
reports per row the median of their figures and the range of each ratio: on a shared VM a
ratio moves by 10-20 % from one process to the next (where the allocator puts the tensors,
what else runs), more than the differences being measured.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from archbench.layers import native  # noqa: E402
from archbench.layers.mixers.shift import KERNEL, Shift, _native_call, _native_fn, _shift, partial_shift  # noqa: E402
from archbench.measure.speed import device_name  # noqa: E402
from archbench.results import provenance, write_report  # noqa: E402

# ShiftViT-T stage shapes at 224 (batch 8): (C, H, W)
SHAPES = [(96, 56, 56), (192, 28, 28), (384, 14, 14), (768, 7, 7)]
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def algorithm1(x: torch.Tensor, g: int) -> torch.Tensor:
    """ShiftViT paper, Algorithm 1: a zero tensor, then slice copies."""
    out = torch.zeros_like(x)
    out[:, 0 * g:1 * g, :, :-1] = x[:, 0 * g:1 * g, :, 1:]
    out[:, 1 * g:2 * g, :, 1:] = x[:, 1 * g:2 * g, :, :-1]
    out[:, 2 * g:3 * g, :-1, :] = x[:, 2 * g:3 * g, 1:, :]
    out[:, 3 * g:4 * g, 1:, :] = x[:, 3 * g:4 * g, :-1, :]
    out[:, 4 * g:, :, :] = x[:, 4 * g:, :, :]
    return out


class CopyFunction(torch.autograd.Function):
    """A copy as a custom autograd function whose backward is a plain copy of the gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        return dy.clone()


class CopyModule(torch.nn.Module):
    """A copy as a module: what any module call costs (``Module.__call__``) around a copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


SYNC = [lambda: None]  # torch.cuda.synchronize when timing a GPU: a block ends when its work has run


def per_call(fn, iters: int) -> float:
    SYNC[0]()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    SYNC[0]()
    return (time.perf_counter() - t0) / iters


def medians_us(fns: dict, rounds: int, block_s: float) -> dict[str, float]:
    """Median over interleaved rounds of the mean time per call, in microseconds; each round
    runs each function for a block of about ``block_s`` seconds (at least one call)."""
    iters = {}
    for k, f in fns.items():  # warm-up (allocator, caches, plans), then size the blocks
        per_call(f, 3)
        iters[k] = max(1, round(block_s / min(per_call(f, 1) for _ in range(3))))
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            times[k].append(per_call(fns[k], iters[k]))
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def cold_calls_us(fns: dict, flush, rounds: int = 9, calls: int = 1000) -> dict[str, float]:
    """Median over rounds of the mean time of one call made right after ``flush()`` (a copy of
    the stage's tensor, as a model's step runs one between two shifts): the fixed cost of a
    call when the caches hold the tensors' data, not the code and objects the call walks."""
    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            total = 0.0
            for _ in range(calls):
                flush()
                t0 = time.perf_counter()
                fns[k]()
                total += time.perf_counter() - t0
            times[k].append(total / calls)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def bench_shape(shape: tuple[int, ...], fmt: torch.memory_format, rounds: int, block_s: float,
                compiled: bool = False, ops_column: bool = False, device: torch.device = torch.device("cpu")) -> dict:
    B, C, H, W = shape
    shift = Shift(C, heads=1, grid=(H, W)).to(device)
    g = shift.g
    fused = torch.compile(shift, dynamic=False) if compiled else None
    with torch.inference_mode():
        x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
        y = shift(x)
        assert torch.equal(y, algorithm1(x, g)) and y.is_contiguous(memory_format=fmt)
        copy_module = CopyModule()
        fns = {"ours": lambda: shift(x), "algorithm1": lambda: algorithm1(x, g), "copy": lambda: x.clone(),
               # the same work without the module call, and a copy with one: how much of ours_vs_copy is
               # Module.__call__, which every mixer pays (the identity one too)
               "function": lambda: partial_shift(x, g), "copy_module": lambda: copy_module(x)}
        if ops_column:  # our PyTorch-op form, where the C kernel is what `ours` runs
            assert torch.equal(_shift(x, g, allow_native=False), y)
            fns["torch_ops"] = lambda: _shift(x, g, allow_native=False)
            # the C call alone into a reused output, against a copy into a reused output: what the
            # kernel costs without the module's Python-level calls and the output's allocation
            fn, out = _native_fn(), torch.empty_like(x)
            last = fmt == torch.channels_last
            fns["kernel"] = lambda: _native_call(fn, x, out, g, False, last)
            fns["copy_into"] = lambda: out.copy_(x)
        if compiled:  # the module under torch.compile (inductor): the slices fused into one generated kernel
            assert torch.equal(fused(x), y)
            fns["compiled"] = lambda: fused(x)
        fwd = medians_us(fns, rounds, block_s)
        if device.type == "cpu":  # the module's fixed cost per call: on a 1x12x2x2 map, after a copy of this stage's
            tiny, flushed = torch.randn(1, 12, 2, 2).contiguous(memory_format=fmt), torch.empty_like(x)
            small = Shift(12, heads=1, grid=(2, 2))
            cold = cold_calls_us({"ours": lambda: small(tiny), "copy": lambda: tiny.clone()}, lambda: flushed.copy_(x))
            fwd.update({"ours_tiny_cold": cold["ours"], "copy_tiny_cold": cold["copy"]})
    # backward: one graph per function, retained, so that a call times the backward pass only
    x = torch.randn(shape, device=device).contiguous(memory_format=fmt).requires_grad_(True)
    dy = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    graphs = {"ours": shift(x), "algorithm1": algorithm1(x, g), "copy": CopyFunction.apply(x), "clone": x.clone()}
    if compiled:  # inductor's backward graph, compiled with the forward
        graphs["compiled"] = fused(x)
    assert "Shift" in type(graphs["ours"].grad_fn).__name__  # our autograd function, not generic slices
    grad = torch.autograd.grad(graphs["ours"], x, dy, retain_graph=True)[0]
    assert torch.equal(grad, torch.autograd.grad(graphs["algorithm1"], x, dy, retain_graph=True)[0])
    assert grad.is_contiguous(memory_format=fmt)
    if compiled:
        assert torch.equal(grad, torch.autograd.grad(graphs["compiled"], x, dy, retain_graph=True)[0])
    bwd = medians_us({k: (lambda y=y: torch.autograd.grad(y, x, dy, retain_graph=True)) for k, y in graphs.items()},
                     rounds, block_s)
    return {"ours_us": fwd["ours"], "algorithm1_us": fwd["algorithm1"], "copy_us": fwd["copy"],
            "function_us": fwd["function"], "copy_module_us": fwd["copy_module"],
            "torch_ops_us": fwd.get("torch_ops", fwd["ours"]),
            "kernel_us": fwd.get("kernel", float("nan")), "copy_into_us": fwd.get("copy_into", float("nan")),
            "ours_tiny_cold_us": fwd.get("ours_tiny_cold", float("nan")),
            "copy_tiny_cold_us": fwd.get("copy_tiny_cold", float("nan")),
            **({"compiled_us": fwd["compiled"], "compiled_bwd_us": bwd["compiled"]} if compiled else {}),
            "ours_bwd_us": bwd["ours"], "algorithm1_bwd_us": bwd["algorithm1"], "copy_bwd_us": bwd["copy"],
            "clone_bwd_us": bwd["clone"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=61)
    ap.add_argument("--block-ms", type=float, default=4.0, help="time per function per round")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated: {', '.join(FORMATS)}")
    ap.add_argument("--compiled", action="store_true",
                    help="also time the forward of the module under torch.compile (inductor; needs a C++ compiler)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the C kernel is CPU-only; CUDA runs the PyTorch ops)")
    ap.add_argument("--processes", type=int, default=1,
                    help="run the measurement in this many fresh processes; report medians and ranges")
    ap.add_argument("--out", default="results/benchmarks/shift")
    args = ap.parse_args()
    if args.processes < 1:
        ap.error(f"--processes {args.processes}: must be at least 1")
    if args.processes > 1:
        return over_processes(args)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"shift.py: error: --device {args.device}: no CUDA GPU is visible to torch {torch.__version__}")
        SYNC[0] = torch.cuda.synchronize
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]  # other processes on the machine make every number noisy
    rows = []
    for fmt_name in args.formats.split(","):
        for C, H, W in SHAPES:
            shape = (args.batch_size, C, H, W)
            # the C kernel takes dense (B, C, H, W) or (B, H, W, C) images on the CPU
            kernel = "native" if device.type == "cpu" and _native_fn() is not None else "torch ops"
            ops_ran = kernel == "native"
            t = bench_shape(shape, FORMATS[fmt_name], args.rounds, args.block_ms / 1e3, args.compiled,
                            ops_column=ops_ran, device=device)
            rows.append({"shape": "x".join(map(str, shape)), "format": fmt_name, "kernel": kernel,
                         "MB": round(torch.Size(shape).numel() * 4 / 2 ** 20, 2),
                         **{k: round(v, 1) if v == v else "" for k, v in t.items()},  # NaN: not timed here
                         "ours_vs_copy": round(t["ours_us"] / t["copy_us"], 2),
                         "function_vs_copy": round(t["function_us"] / t["copy_us"], 2),
                         "ours_vs_copy_module": round(t["ours_us"] / t["copy_module_us"], 2),
                         "kernel_vs_copy_into": round(t["kernel_us"] / t["copy_into_us"], 2) if ops_ran else "",
                         **({"compiled_vs_copy": round(t["compiled_us"] / t["copy_us"], 2),
                             "compiled_bwd_vs_copy": round(t["compiled_bwd_us"] / t["copy_bwd_us"], 2)}
                            if args.compiled else {}),
                         "ours_bwd_vs_copy": round(t["ours_bwd_us"] / t["copy_bwd_us"], 2),
                         "speedup_vs_algorithm1": round(t["algorithm1_us"] / t["ours_us"], 2),
                         "bwd_speedup_vs_algorithm1": round(t["algorithm1_bwd_us"] / t["ours_bwd_us"], 2),
                         "dtype": "fp32", "batch_size": args.batch_size,
                         "device": device_name(device), "threads": args.threads, **provenance()})
            print(rows[-1]["shape"], fmt_name, {k: rows[-1][k] for k in ("ours_vs_copy", "ours_bwd_vs_copy")},
                  flush=True)
    load = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    for row in rows:
        row["load_average"] = load
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out.with_suffix(".csv"), index=False)
    write_report(out.with_suffix(".md"), TITLE, f"python benchmarks/shift.py {' '.join(sys.argv[1:])}",
                 notes(args, device, load), rows, columns(args))


TITLE = "Shift: ours vs a plain copy vs the paper's Algorithm 1, forward and backward"
RATIOS = ["ours_vs_copy", "function_vs_copy", "ours_vs_copy_module", "kernel_vs_copy_into", "ours_bwd_vs_copy",
          "compiled_vs_copy", "compiled_bwd_vs_copy"]


def columns(args) -> list[str]:
    cols = ["shape", "format", "kernel", "MB", "ours_us", "torch_ops_us", "algorithm1_us", "copy_us", "ours_vs_copy",
            "function_us", "function_vs_copy", "copy_module_us", "ours_vs_copy_module", "kernel_us", "copy_into_us",
            "kernel_vs_copy_into", "ours_bwd_us",
            "algorithm1_bwd_us", "copy_bwd_us", "ours_bwd_vs_copy", "clone_bwd_us", "ours_tiny_cold_us",
            "copy_tiny_cold_us"]
    if args.compiled:
        cols[8:8] = ["compiled_us", "compiled_vs_copy"]
        cols += ["compiled_bwd_us", "compiled_bwd_vs_copy"]
    return cols


def notes(args, device: torch.device, load: str) -> list[str]:
    return ["Median microseconds per call over interleaved rounds (ShiftViT-T stage shapes at 224, fp32).  ",
            "Forward (`ours_us`, `algorithm1_us`, `copy_us`): inference mode; ours = the `Shift` module's call, "
            "copy = `x.clone()`.  ",
            "`function_us`: the same shift called as a function (`partial_shift(x, g)`), without the module call; "
            "`copy_module_us`: `x.clone()` inside a module's `forward`, called as a module. `function_vs_copy` and "
            "`ours_vs_copy_module` set function against function and module against module: the part of "
            "`ours_vs_copy` that is `nn.Module.__call__`, which every mixer pays, the identity one too.  ",
            f"`kernel`: what `ours` ran — `native`: the C kernel, {native.status(KERNEL)}, one call for the batch "
            "(dense (B, C, H, W) or channels-last on the CPU); `torch ops`: the PyTorch-op form (views, copies, "
            "border fills). "
            "`torch_ops_us`: the PyTorch-op form timed in the same rounds (= `ours_us` where that is what ran).  ",
            "`kernel_us`: the C kernel's call alone (through the entry the status above names) into a reused "
            "output, against `copy_into_us`, "
            "`out.copy_(x)` into a reused output: the kernel without the module's Python-level calls "
            "(module, checks, output allocation: a fixed few µs a call) — blank where the kernel did not run.  ",
            "`ours_tiny_cold_us`, `copy_tiny_cold_us`: that fixed cost alone — the module call and `x.clone()` on "
            "a 1x12x2x2 map, each call right after a copy of the row's tensor (as in a model's step, where other "
            "layers' data has passed through the caches between two shifts): what a call costs beyond its "
            "bytes, set against a copy of the row's shape (`copy_us`).  ",
            "Backward (`*_bwd_us`): `torch.autograd.grad(y, x, dy, retain_graph=True)` on one retained graph "
            "(autograd engine + the op's backward). **Backward copy baseline (`copy_bwd_us`): a copy as a custom "
            "autograd function, like ours, whose backward is a plain `dy.clone()`** — engine and function "
            "overhead included, as in ours. `clone_bwd_us`: the same call through `x.clone()`, whose backward "
            "passes `dy` on uncopied (the engine's own cost); a plain `dy.clone()` costs `copy_us`.  ",
            *(["`compiled_us`: the forward of the same module under `torch.compile(dynamic=False)` (inductor's "
               "generated kernel for the slice form: C++ on a CPU, Triton on CUDA), after compiling; the same "
               "inference mode. `compiled_bwd_us`: its compiled backward, timed like ours.  "]
              if args.compiled else []),
            *(["On CUDA every block of calls ends with `torch.cuda.synchronize()`: a call's time is its share of "
               "the GPU's work, kernel launches included.  "] if device.type == "cuda" else []),
            f"1-minute load average while it ran: {load} ({os.cpu_count()} cores; well above 0 means other "
            "jobs shared them and the numbers are noisy, the 2-thread kernels most of all)."]


def over_processes(args) -> None:
    """``--processes K``: the measurement in K fresh processes; per row the median of each
    figure over them, and each ratio's range (lowest-highest) beside it."""
    argv, skip = [], False
    for a in sys.argv[1:]:  # the same command without --processes/--out
        if skip:
            skip = False
        elif a in ("--processes", "--out"):
            skip = True
        elif not a.startswith(("--processes=", "--out=")):
            argv.append(a)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # before the minutes of measuring
    load_before = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            print(f"process {i + 1}/{args.processes}", flush=True)
            subprocess.run([sys.executable, __file__, *argv, "--out", f"{tmp}/run{i}"], check=True)
            run = pd.read_csv(f"{tmp}/run{i}.csv", keep_default_na=False, dtype={"git_commit": str})  # 0270305 stays so
            runs.append(run.assign(process=i + 1))
    load = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    every = pd.concat(runs, ignore_index=True).assign(load_average=load)
    every.to_csv(out.with_suffix(".csv"), index=False)  # every process's rows
    rows = []
    for _, group in every.groupby(["format", "shape"], sort=False):
        row = group.iloc[0].to_dict()
        for col in group.columns:
            values = pd.to_numeric(group[col], errors="coerce")
            numeric = values.notna().all()
            if (col.endswith("_us") or col in RATIOS) and numeric:
                row[col] = round(float(values.median()), 2 if col in RATIOS else 1)
            if col in RATIOS:  # blank where the column was not timed (the kernel's, where it did not run)
                row[f"{col}_range"] = f"{values.min():.2f}-{values.max():.2f}" if numeric else ""
        rows.append(row)
    cols = []
    for col in columns(args):
        cols += [col, f"{col}_range"] if col in RATIOS else [col]
    device = torch.device(args.device)
    _native_fn()  # for the notes' status line: the same library the processes loaded
    summary = [f"**{args.processes} processes, one after another: each figure is the median of their medians, and "
               "each ratio's `_range` its lowest and highest over the processes** (every process's rows: "
               f"[{out.with_suffix('.csv').name}]({out.with_suffix('.csv').name})).  "]
    write_report(out.with_suffix(".md"), TITLE, f"python benchmarks/shift.py {' '.join(sys.argv[1:])}",
                 summary + notes(args, device, load), rows, cols)

if __name__ == "__main__":
    main()
