"""Small C kernels, compiled at first use and called through ctypes.

For the few layers whose PyTorch-op form is bound by per-op call overhead rather than by
memory or arithmetic (the shift: ~15 Python-level view/copy/fill calls for one pass over
the tensor). A kernel is one plain C file beside its layer — no torch headers, so it builds
in well under a second with the system's C compiler (``$CC``, else ``cc``, ``gcc`` or
``clang``) — into a per-user cache keyed by the source's hash. Where there is no compiler,
the build fails, or ``ARCHBENCH_NATIVE=0`` is set, :func:`load` gives None and the layer
uses its PyTorch form (tested to give the same bits); :func:`status` says which and why.

A kernel's ``#pragma omp`` loops run on PyTorch's own OpenMP threads: the library is compiled
with ``-fopenmp`` but linked without an OpenMP runtime, so its calls bind, when it is loaded,
to the runtime PyTorch already loaded (one pool, sized by ``torch.set_num_threads``, and no
second pool spinning against it). Where that does not load (a PyTorch without OpenMP, a
compiler without it), the kernel is built again without ``-fopenmp`` and runs on the calling
thread; the library's name ends ``-openmp`` or ``-serial`` accordingly.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ENV = "ARCHBENCH_NATIVE"  # "0": never build or load a kernel
_status: dict[str, str] = {}  # kernel name → "native (LIBRARY)" or "torch ops (WHY)", once load() ran


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> str | None:
    return os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _folders() -> list[Path]:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return [Path(cache) / "archbench" / "native", Path(tempfile.gettempdir()) / f"archbench-native-{user}"]


@functools.lru_cache(maxsize=None)
def load(source: Path) -> ctypes.CDLL | None:
    """The compiled library of the C file ``source`` (built now if not cached), or None."""
    name = source.stem
    if not enabled():
        _status[name] = f"torch ops ({ENV}=0)"
        return None
    cc = _compiler()
    if cc is None:
        _status[name] = "torch ops (no C compiler: cc, gcc, clang or $CC)"
        return None
    key = hashlib.sha256(source.read_bytes() + cc.encode()).hexdigest()[:16]
    errors = []
    for folder in _folders():
        for variant, flags in (("openmp", ["-fopenmp"]), ("serial", [])):
            lib = folder / f"{name}-{key}-{variant}.so"
            try:
                if not lib.exists():
                    _build(cc, source, lib, flags)
                loaded = ctypes.CDLL(str(lib))
            except subprocess.CalledProcessError as e:
                errors.append(f"{cc} failed: {(e.stderr or '').strip().splitlines()[-1:] or e.returncode}")
            except (OSError, subprocess.SubprocessError) as e:
                errors.append(f"{lib if lib.exists() else folder}: {e}")
            else:
                _status[name] = f"native ({lib})"
                return loaded
    _status[name] = f"torch ops ({'; '.join(errors)})"
    return None


def _build(cc: str, source: Path, lib: Path, flags: list[str]) -> None:
    """Compile, then link without naming an OpenMP runtime (see the module's docstring)."""
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.parent / f".{lib.name}.{os.getpid()}"  # processes building at once each rename a whole file
    try:
        for cmd in ([cc, "-O3", "-fPIC", *flags, "-c", "-o", f"{tmp}.o", str(source)],
                    [cc, "-shared", "-o", f"{tmp}.so", f"{tmp}.o"]):
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
        os.replace(f"{tmp}.so", lib)
    finally:
        for leftover in (f"{tmp}.o", f"{tmp}.so"):
            with contextlib.suppress(OSError):
                os.remove(leftover)


def status(source: Path) -> str:
    """'native (LIBRARY)' or 'torch ops (WHY)': what :func:`load` gave for ``source``."""
    load(source)
    return _status[source.stem]


def summary() -> str:
    """The kernels this process asked for and what each runs as, for a results row's
    provenance: ``shift_kernel=native``, or ``shift_kernel=torch ops (no C compiler ...)``;
    empty when no layer asked for one (a model without such a layer)."""
    return "; ".join(f"{name}={'native' if st.startswith('native') else st}" for name, st in sorted(_status.items()))
