"""Will a model fit? Its size from a build on the meta device (shapes only, nothing allocated)
against the memory this machine has free, checked before the real build, so a spec too big
for the machine is refused in one line instead of failing in the allocator."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch

from archbench.errors import UsageError

# what a command holds at once, in copies of the weights (a lower bound: activations come on top)
COPIES = {
    "build": (1, "to build it"),  # the weights
    "forward-backward": (2, "for a forward and backward pass (weights + gradients)"),  # check, profile
    "train": (4, "to train it (weights, gradients, AdamW's two moments)"),
}


def model_size(spec) -> tuple[int, int]:
    """``(parameters, bytes)`` of ``spec``'s model, parameters and buffers, from a meta-device build."""
    from archbench.builder import build_model

    with torch.device("meta"):  # shapes and dtypes, no storage
        model = build_model(spec)
    params = sum(p.numel() for p in model.parameters())
    return params, sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_left() -> int | None:
    """What a cgroup v2 memory limit leaves this process's group (None without a limit)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        return None


def available_bytes(device: str | torch.device = "cpu") -> tuple[int, str] | None:
    """``(bytes, what)``: free memory on ``device`` (a GPU's free memory; on the CPU the kernel's
    MemAvailable, or less under a cgroup limit), or None when it cannot be told."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _ = torch.cuda.mem_get_info(dev)
        return free, f"free on {dev}"
    found = [(b, w) for b, w in ((_meminfo_available(), "RAM available"), (_cgroup_left(), "left under the cgroup "
                                                                                         "memory limit"))
             if b is not None]
    return min(found) if found else None


def check_fits(spec, *, holds: str = "forward-backward", device: str | torch.device = "cpu",
               fix: str = "use smaller --dims or --depths") -> int:
    """Refuse (one-line :class:`UsageError`) a model whose weights alone, in the copies that
    ``holds`` needs (:data:`COPIES`), exceed the free memory of ``device``; returns the weights'
    bytes. Checked on a meta-device build, so nothing is allocated."""
    copies, why = COPIES[holds]
    params, weights = model_size(spec)
    need = weights * copies
    free = available_bytes(device)
    if free is not None and need > free[0]:
        raise UsageError(f"the model has {_count(params)} parameters ({_size(weights)}) and needs at least "
                         f"{_size(need)} {why}, but {_size(free[0])} is {free[1]}; {fix}")
    return weights


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError


def _count(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{int(n)}"
