"""archbench.layers.native: C kernels built at first use, and the fallback where they cannot be."""
import ctypes
from pathlib import Path

import pytest

from archbench.layers import native


def write(tmp_path, name, text):
    path = tmp_path / f"{name}.c"
    path.write_text(text)
    return path


def test_a_kernel_builds_once_into_the_cache_and_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = write(tmp_path, "add_one", "int add_one(int v) { return v + 1; }\n")
    lib = native.load(src)
    assert lib is not None and lib.add_one(41) == 42
    built = list((tmp_path / "cache" / "archbench" / "native").glob("add_one-*.so"))
    assert len(built) == 1 and native.status(src) == f"native ({built[0]})"
    assert native.load(src) is lib  # once per process


def test_a_source_that_does_not_compile_falls_back_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = write(tmp_path, "broken", "int broken(void) { return undefined_name; }\n")
    assert native.load(src) is None
    assert native.status(src).startswith("torch ops (") and "failed" in native.status(src)


def test_no_compiler_or_disabled_means_torch_ops(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    src = write(tmp_path, "nocc", "int nocc(void) { return 1; }\n")
    assert native.load(src) is None and "no-such-cc" in native.status(src)
    monkeypatch.setenv(native.ENV, "0")
    src = write(tmp_path, "off", "int off(void) { return 1; }\n")
    assert native.load(src) is None and native.status(src) == f"torch ops ({native.ENV}=0)"


def test_the_shift_kernel_builds_here():
    """The project's machines have a C compiler: the shift's C kernel must build on them (its
    results against Algorithm 1 are tests/test_mixers.py's, for both forms)."""
    from archbench.layers.mixers.shift import KERNEL, _native_fn

    assert isinstance(native.load(KERNEL), ctypes.CDLL), native.status(KERNEL)
    assert _native_fn() is not None
    # and with its Python entry: the project's machines have Python's headers (the ctypes
    # call it replaces costs ~1 µs more, 3% of a 7x7 stage's copy)
    assert native.load_module(KERNEL) is not None and native.status(KERNEL).endswith(", Python entry)")


PY_KERNEL = """
#include <stdint.h>
int64_t twice(int64_t v) { return 2 * v; }
#if defined(__has_include)
#if __has_include(<Python.h>)
#include <Python.h>
static PyObject *py_twice(PyObject *self, PyObject *arg) { return PyLong_FromLongLong(twice(PyLong_AsLongLong(arg))); }
static PyMethodDef methods[] = {{"twice", py_twice, METH_O, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "NAME", NULL, -1, methods, NULL, NULL, NULL, NULL};
PyMODINIT_FUNC PyInit_NAME(void) { return PyModule_Create(&module); }
#endif
#endif
"""


def test_a_kernel_with_a_python_entry_is_imported_as_a_module(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = write(tmp_path, "pytwice", PY_KERNEL.replace("NAME", "pytwice"))
    module = native.load_module(src)
    assert module is not None and module.twice(21) == 42
    assert native.load(src).twice(21) == 42  # the same library's C function, through ctypes
    assert native.status(src).endswith(", Python entry)"), native.status(src)


def test_without_python_headers_the_kernel_is_called_through_ctypes(tmp_path, monkeypatch):
    """A library built where the compiler finds no Python.h (the include folder Python names
    is missing) has no module entry: load_module gives None, says so, and the C functions load."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(native.sysconfig, "get_paths", lambda: {"include": str(tmp_path / "no-headers")})
    src = write(tmp_path, "noheaders", PY_KERNEL.replace("NAME", "noheaders"))
    module = native.load_module(src)
    assert native.load(src) is not None and native.load(src).twice(4) == 8
    if module is not None:
        pytest.skip("the compiler finds a Python.h of its own (a system python3-dev): the entry is built anyway")
    assert native.status(src).endswith(", ctypes: built without Python's headers)"), native.status(src)


def test_the_cache_key_names_the_python(tmp_path, monkeypatch):
    """A module built for one Python is never imported by another (their ABIs differ): the
    library's name carries a key of this Python's extension tag."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = write(tmp_path, "abi", "int abi(void) { return 3; }\n")
    assert native.load(src) is not None
    native.load.cache_clear()
    monkeypatch.setattr(native, "_python_abi", lambda: ".cpython-399-other.so|/elsewhere")
    assert native.load(src) is not None
    native.load.cache_clear()
    assert len(list((tmp_path / "cache" / "archbench" / "native").glob("abi-*.so"))) == 2


def test_rows_say_which_form_of_the_shift_ran():
    """A results row's provenance names the kernels the process used (speed depends on them)."""
    import torch

    from archbench.layers.mixers.shift import Shift
    from archbench.results import provenance

    Shift(24, heads=1, grid=(4, 4))(torch.randn(2, 24, 4, 4))
    assert "shift_kernel=native" in provenance()["native_kernels"]


def test_openmp_loops_run_on_pytorchs_own_threads(tmp_path, monkeypatch):
    """A kernel's `#pragma omp` binds to the OpenMP runtime PyTorch loaded: the team is as large
    as asked, and no second runtime (with a second pool of threads) is loaded beside it."""
    import torch

    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this PyTorch does not run on OpenMP")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = write(tmp_path, "team", """
int omp_get_num_threads(void);
int team(int n) {
    int size = 0;
    #pragma omp parallel num_threads(n)
    {
        #pragma omp single
        size = omp_get_num_threads();
    }
    return size;
}
""")
    lib = native.load(src)
    assert lib is not None and native.status(src).endswith("-openmp.so)"), native.status(src)
    assert lib.team(3) == 3
    maps = Path("/proc/self/maps")
    if maps.exists():
        runtimes = {line.split()[-1] for line in maps.read_text().splitlines() if "libgomp" in line or "libomp" in line}
        assert len(runtimes) == 1, runtimes


def test_an_openmp_build_that_does_not_load_falls_back_to_one_thread(tmp_path, monkeypatch):
    """Built with -fopenmp, a library whose OpenMP symbols PyTorch's runtime does not provide
    fails to load; the kernel is then built without OpenMP and runs on the calling thread."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = write(tmp_path, "fallback", """
#ifdef _OPENMP
int archbench_no_such_runtime_call(void);
int fallback(void) { return archbench_no_such_runtime_call(); }
#else
int fallback(void) { return 7; }
#endif
""")
    lib = native.load(src)
    assert lib is not None and lib.fallback() == 7
    assert native.status(src).endswith("-serial.so)"), native.status(src)
