"""Timing and memory: inference throughput, batch-1 latency, training-step throughput, peak
memory — warmed up, synchronised, under ``inference_mode``, at a fixed thread count.

On CUDA, peak memory is ``max_memory_allocated``; on CPU it is the growth of the process's
resident set over the run, sampled every millisecond by a background thread (so a spike
shorter than that can be missed). A CUDA out-of-memory retries at half the batch; the batch
actually used is returned.
"""
from __future__ import annotations

import contextlib
import ctypes
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn
from archbench.errors import UsageError

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SpeedResult:
    throughput: float  # images/s, inference at ``batch_size``
    latency_ms: float  # median, batch 1
    latency_p90_ms: float
    train_throughput: float | None  # images/s, forward + backward + optimizer step
    peak_mem_mb: float  # inference at the batch: CUDA max allocated, or CPU resident-set growth
    train_peak_mem_mb: float | None  # the same over the training steps (None without them)
    batch_size: int  # the batch actually used (after any OOM retry)
    device: str
    dtype: str
    threads: int
    channels_last: bool
    compile: str

    def as_dict(self) -> dict:
        return asdict(self)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    import platform
    return platform.processor() or "cpu"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        import os
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size in a thread; ``peak - baseline`` is the growth."""

    def __init__(self):
        self.baseline = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _release_heap() -> None:
    """Hand the C heap's free pages back to the system, so the next RSS baseline is honest."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: growth may then read low after a larger cell
        pass


class PeakMemory:
    """Peak memory of the block in MB (``.mb``): CUDA max allocated, or CPU resident-set growth."""

    def __init__(self, device: torch.device):
        self.device, self.mb = device, float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _release_heap()
            self.rss = PeakRSS().__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self.rss.__exit__(*exc)
            self.mb = (self.rss.peak - self.rss.baseline) / 2 ** 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones, synchronised."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def measure_speed(model: nn.Module, input_size: tuple[int, int, int], *, batch_size: int = 8,
                  device: str | torch.device = "cpu", dtype: str = "fp32", channels_last: bool = False,
                  compile: str = "none", threads: int | None = None, warmup: int = 3, repeats: int = 10,
                  train: bool = True) -> SpeedResult:
    """Time ``model`` on random input of shape (batch, *input_size). The model is left in
    eval mode with its original parameters (the training step runs on a copy's optimizer
    state but updates the weights: call it on a throwaway model, as ``profile`` does)."""
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if compile not in ("none", "default", "reduce-overhead", "max-autotune"):
        raise UsageError(f"compile mode {compile!r}; choose none, default, reduce-overhead or max-autotune")
    device = torch.device(device)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        while True:
            try:
                return _measure(model, input_size, batch_size, device, dtype, channels_last, compile,
                                warmup, repeats, train)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                torch.cuda.empty_cache()
                batch_size //= 2
    finally:
        torch.set_num_threads(old_threads)


def _measure(model, input_size, batch_size, device, dtype, channels_last, compile, warmup, repeats, train):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt)
    run = model if compile == "none" else torch.compile(model, mode=None if compile == "default" else compile)
    autocast = (torch.autocast(device.type, dtype=DTYPES[dtype]) if DTYPES[dtype] is not None
                else contextlib.nullcontext())

    def batch(n):
        return torch.randn(n, *input_size, device=device).contiguous(memory_format=fmt)

    x, x1 = batch(batch_size), batch(1)
    model.eval()
    with torch.inference_mode(), autocast:
        with PeakMemory(device) as peak:  # at the batch; batch-1 latency after, outside it
            t = time_calls(lambda: run(x), device, warmup, repeats)
        lat = time_calls(lambda: run(x1), device, warmup, max(repeats * 2, 10))
    train_tp = train_peak = None
    if train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)

        def step():
            with autocast:
                loss = run(x).float().logsumexp(dim=-1).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        with PeakMemory(device) as train_mem:  # weights' gradients and the step's activations
            tt = time_calls(step, device, max(1, warmup // 2), max(3, repeats // 2))
        train_tp, train_peak = batch_size / statistics.median(tt), train_mem.mb
        model.eval()
    lat_sorted = sorted(lat)
    p90 = lat_sorted[min(len(lat_sorted) - 1, int(round(0.9 * (len(lat_sorted) - 1))))]
    return SpeedResult(
        throughput=batch_size / statistics.median(t), latency_ms=1e3 * statistics.median(lat),
        latency_p90_ms=1e3 * p90, train_throughput=train_tp, peak_mem_mb=peak.mb,
        train_peak_mem_mb=train_peak, batch_size=batch_size,
        device=device_name(device), dtype=dtype, threads=torch.get_num_threads(),
        channels_last=channels_last, compile=compile)
