"""``archbench scale``: cost across resolutions (rows, tokens, analytic MACs, slopes, files, bad input)."""
import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from archbench.builder import make_spec
from archbench.cli import main
from archbench.measure.scale import candidates, fit_slope, measure_grid, slopes, tokens
from archbench.models import get_entry

PATCH, DIM, DEPTH = 8, 16, 1
TINY = ["--img-sizes", "32,64", "--dims", str(DIM), "--depths", str(DEPTH), "--heads", "1",
        "--patch-size", str(PATCH), "--num-classes", "10", "--batch-size", "2", "--repeats", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "scale"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["scale", "--mixers", "msa,shift", *TINY, "--out", str(out), "--json"])
    return code, json.loads(buf.getvalue().strip().splitlines()[-1]), out


def test_one_row_per_mixer_and_size_with_analytic_tokens(tiny_run):
    code, res, _ = tiny_run
    assert code == 0
    rows = res["rows"]
    assert sorted((r["name"], r["img_size"]) for r in rows) == [("msa", 32), ("msa", 64), ("shift", 32), ("shift", 64)]
    for r in rows:
        assert r["status"] == "ok" and r["error"] is None
        assert r["tokens"] == (r["img_size"] // PATCH) ** 2
        assert r["throughput"] > 0 and r["latency_ms"] > 0 and r["train_throughput"] > 0
        for key in ("params", "gmacs", "train_peak_mb", "infer_peak_mb", "device", "threads", "torch", "git_commit",
                    "batch_size", "dtype", "spec"):
            assert key in r, key


def test_msa_mixer_macs_are_the_analytic_count_and_grow_faster_than_tokens(tiny_run):
    rows = {(r["name"], r["img_size"]): r for r in tiny_run[1]["rows"]}
    for size in (32, 64):
        n, c = (size // PATCH) ** 2 + 1, DIM  # patch tokens + the class token
        qkv_proj, attention = n * 4 * c * c, n * n * 2 * c  # QKV + output projections; QKᵀ and attn·V
        assert rows["msa", size]["gmacs_token_mixer"] * 1e9 == pytest.approx(DEPTH * (qkv_proj + attention))
    token_ratio = rows["msa", 64]["tokens"] / rows["msa", 32]["tokens"]
    assert rows["msa", 64]["gmacs"] / rows["msa", 32]["gmacs"] > token_ratio
    assert rows["shift", 64]["gmacs_token_mixer"] == 0  # the shift multiplies nothing
    slope = {r["name"]: r for r in tiny_run[1]["slopes"]}
    assert slope["msa"]["gmacs_token_mixer"] > 1.2 and slope["shift"]["gmacs_token_mixer"] is None


def test_files_are_written_with_the_header(tiny_run):
    _, res, out = tiny_run
    for suffix in ("parquet", "csv", "md", "png"):
        path = out.with_suffix(f".{suffix}")
        assert path.is_file() and path.stat().st_size > 0 and res["files"][suffix] == str(path)
    assert len(pd.read_parquet(out.with_suffix(".parquet"))) == 4 == len(pd.read_csv(out.with_suffix(".csv")))
    md = out.with_suffix(".md").read_text()
    assert "Command: `archbench scale --mixers msa,shift" in md and "threads" in md and "commit" in md
    assert "| msa |" in md and "scale.png" in md


@pytest.mark.parametrize("x", [np.array([196, 400, 784, 1600, 3136]), np.array([1.0, 10.0])])
def test_fitted_slope_recovers_analytic_powers(x):
    assert fit_slope(x, 3.5 * x ** 2) == pytest.approx(2.0)
    assert fit_slope(x, 0.2 * x) == pytest.approx(1.0)
    assert fit_slope(x, np.full(len(x), 7.0)) == pytest.approx(0.0, abs=1e-12)


def test_fitted_slope_skips_what_log_axes_cannot_show():
    assert fit_slope([1, 2, 4, 8], [1, 4, 0, 64]) == pytest.approx(2.0)  # a zero is left out
    assert np.isnan(fit_slope([1, 2], [1, float("nan")]))  # one point left: no slope
    df = pd.DataFrame({"name": ["a"] * 3, "status": ["ok"] * 3, "tokens": [10, 20, 40],
                       "gmacs": [1.0, 4.0, 16.0], "latency_ms": [2.0, 4.0, 8.0]})
    sl = slopes(df, ("gmacs", "latency_ms")).iloc[0]
    assert sl["gmacs"] == pytest.approx(2.0) and sl["latency_ms"] == pytest.approx(1.0)


def test_a_mixer_that_cannot_be_built_is_a_row_with_the_reason():
    base = make_spec(macro="isotropic", dims=8, depths=1, heads=1, patch_size=8, num_classes=10)
    cands = candidates(base, (32,), mixers=("shift",))  # 1/12 of 8 channels moves none
    df = measure_grid(cands, batch_size=2, repeats=1)
    row = df.iloc[0]
    assert row["status"] == "failed" and "moves no channel" in row["error"] and row["tokens"] == 16


def test_a_zoo_model_keeps_its_patch_grid():
    spec = get_entry("deit_tiny").make()
    (cand,) = candidates(spec, (112, 224), name="deit_tiny")
    assert cand.tokens == {112: 49, 224: 196} and tokens(cand.specs[112]) == 49


@pytest.mark.parametrize("argv,needle", [
    (["--img-sizes", "32,abc"], "--img-sizes: 'abc' is not a positive integer"),
    (["--img-sizes", "0"], "--img-sizes: '0' is not a positive integer"),
    (["--img-sizes", "4", "--patch-size", "8"], "--img-sizes 4 is smaller than the patch size 8"),
    (["--img-sizes", "36", "--patch-size", "8"], "--img-sizes 36 does not suit the model"),
    (["--model", "deit_tiny", "--img-sizes", "8"], "--img-sizes 8 is smaller than the patch size 16"),
    (["--mixers", "msa,shfit"], "unknown token mixer 'shfit'"),
    (["--mixers", "all", "--mixer", "msa"], "not both"),
    (["--img-size", "32"], "--img-sizes (a list), not --img-size"),
    (["--repeats", "0"], "--repeats must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, needle):
    code = main(["scale", *argv, "--out", str(tmp_path / "s")])
    _, err = capsys.readouterr()
    assert code == 2 and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # refused before anything was measured or written


def test_a_model_without_a_head_is_timed_too():
    base = make_spec(macro="isotropic", dims=DIM, depths=DEPTH, heads=1, patch_size=PATCH, num_classes=0)
    (row,) = measure_grid(candidates(base, (32,)), batch_size=2, repeats=1).to_dict("records")
    assert row["status"] == "ok" and row["train_throughput"] > 0 and row["tokens"] == 16
