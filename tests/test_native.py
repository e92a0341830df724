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
