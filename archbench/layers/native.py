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

A kernel may also be a Python extension module (a ``PyInit_<name>`` guarded by
``__has_include(<Python.h>)``): the build passes this Python's include folder, and
:func:`load_module` imports the library as a module, whose functions cost a tenth of a
ctypes call (~0.1 µs against ~1.2 µs here). Without Python's headers the same library builds
without that entry and its C functions go through ctypes. The cache key includes this
Python's ABI tag, so another Python never imports a module built for this one.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sysconfig
import tempfile
from types import ModuleType
from pathlib import Path

ENV = "ARCHBENCH_NATIVE"  # "0": never build or load a kernel
_status: dict[str, str] = {}  # kernel name → "native (LIBRARY)" or "torch ops (WHY)", once load() ran
_entries: dict[str, str] = {}  # kernel name → how its functions are called, once load_module() ran
_paths: dict[str, Path] = {}  # kernel name → its loaded library's file


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
    key = hashlib.sha256(source.read_bytes() + cc.encode() + _python_abi().encode()).hexdigest()[:16]
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
                _status[name], _paths[name] = f"native ({lib})", lib
                return loaded
    _status[name] = f"torch ops ({'; '.join(errors)})"
    return None


def _build(cc: str, source: Path, lib: Path, flags: list[str]) -> None:
    """Compile, then link without naming an OpenMP runtime (see the module's docstring)."""
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.parent / f".{lib.name}.{os.getpid()}"  # processes building at once each rename a whole file
    try:
        include = sysconfig.get_paths().get("include")
        python = [f"-I{include}"] if include and os.path.isdir(include) else []
        for cmd in ([cc, "-O3", "-fPIC", *flags, *python, "-c", "-o", f"{tmp}.o", str(source)],
                    [cc, "-shared", "-o", f"{tmp}.so", f"{tmp}.o"]):
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
        os.replace(f"{tmp}.so", lib)
    finally:
        for leftover in (f"{tmp}.o", f"{tmp}.so"):
            with contextlib.suppress(OSError):
                os.remove(leftover)


def _python_abi() -> str:
    """This Python's extension-module tag (``.cpython-311-x86_64-linux-gnu.so``) and header folder."""
    return f"{sysconfig.get_config_var('EXT_SUFFIX')}|{sysconfig.get_paths().get('include')}"


@functools.lru_cache(maxsize=None)
def load_module(source: Path) -> ModuleType | None:
    """The kernel ``source``'s library imported as a Python extension module, or None where it
    was built without its Python entry (no Python headers) or did not build (:func:`load`)."""
    name = source.stem
    lib = load(source)
    if lib is None:
        return None
    try:
        getattr(lib, f"PyInit_{name}")
    except AttributeError:
        _entries[name] = "ctypes: built without Python's headers"
        return None
    path = str(_paths[name])
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    try:
        module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path, loader=loader))
        loader.exec_module(module)
    except ImportError as e:  # a module that does not initialise: its C functions still serve
        _entries[name] = f"ctypes: its Python entry did not import: {e}"
        return None
    _entries[name] = "Python entry"
    return module


def status(source: Path) -> str:
    """'native (LIBRARY)' or 'torch ops (WHY)': what :func:`load` gave for ``source``; with
    ', Python entry' or ', ctypes: WHY' once :func:`load_module` was asked."""
    load(source)
    name = source.stem
    st = _status[name]
    return f"{st[:-1]}, {_entries[name]})" if name in _entries and st.startswith("native") else st


def summary() -> str:
    """The kernels this process asked for and what each runs as, for a results row's
    provenance: ``shift_kernel=native``, or ``shift_kernel=torch ops (no C compiler ...)``;
    empty when no layer asked for one (a model without such a layer)."""
    return "; ".join(f"{name}={'native' if st.startswith('native') else st}" for name, st in sorted(_status.items()))
