"""archbench.layers.native: C kernels built at first use, and the fallback where they cannot be."""
import ctypes

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
