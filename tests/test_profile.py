"""``archbench profile`` and the results table."""
import json

import pandas as pd
import pytest

from archbench.cli import main
from archbench.measure import flops
from archbench.results import append_rows, read_table
from archbench.spec import ArchSpec

TINY = ["--mixer", "shift", "--ffn", "msffn", "--img-size", "32", "--num-classes", "10", "--dims", "16",
        "--depths", "1"]


def test_profile_json_has_the_promised_fields(capsys, tmp_path):
    out = tmp_path / "profile"
    code = main(["profile", *TINY, "--repeats", "2", "--batch-size", "2", "--json", "--out", str(out)])
    assert code == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("params", "gmacs_fvcore", "gmacs_ptflops", "throughput", "latency_ms", "peak_mem_mb", "device",
                "torch", "git_commit", "timestamp", "batch_size", "threads", "dtype"):
        assert key in row, key
    assert row["throughput"] > 0 and row["latency_ms"] > 0
    assert row["gmacs_fvcore"] == pytest.approx(row["gmacs_ptflops"], rel=1e-2)
    table = read_table(out)
    assert len(table) == 1 and pd.read_csv(out.with_suffix(".csv")).shape[0] == 1
    assert ArchSpec.from_json(table.loc[0, "spec"]).stages[0].mixer == "shift"


def test_a_failing_counter_leaves_its_field_empty_with_the_reason(capsys, monkeypatch):
    def broken(model, x):
        raise RuntimeError("op aten::weird has no handle")

    monkeypatch.setitem(flops.BACKENDS, "ptflops", broken)
    code = main(["profile", *TINY, "--no-speed", "--json", "--out", ""])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0
    assert row["gmacs_ptflops"] is None and "aten::weird" in row["ptflops_error"]
    assert row["gmacs_fvcore"] > 0 and row["throughput"] is None


@pytest.mark.parametrize("argv,needle", [
    (["profile", "--model", "deit_smal", "--no-speed"], "unknown model 'deit_smal'"),
    (["profile", "--mixer", "msa", "--heads", "5", "--dims", "64", "--img-size", "32"], "heads=5 does not divide"),
    (["profile", *TINY, "--threads", "0"], "--threads must be >= 1"),
])
def test_profile_bad_input(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_results_table_appends_and_keeps_both_formats(tmp_path):
    stem = tmp_path / "t"
    append_rows(stem, [{"a": 1, "spec": {"x": 1}, "skipped": None}])
    df = append_rows(stem, [{"a": 2, "b": "new", "spec": {"x": 2}, "skipped": {"op": 1}}])
    assert list(df["a"]) == [1, 2]
    assert list(read_table(stem)["a"]) == [1, 2]
    csv = pd.read_csv(stem.with_suffix(".csv"))
    assert list(csv["a"]) == [1, 2] and json.loads(csv.loc[1, "skipped"]) == {"op": 1}
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


def test_training_peak_memory_holds_the_gradients():
    """profile's memory columns: the training steps' peak is measured over those steps (before,
    only inference was, under a bare "peak MB"), so it holds at least the gradients — an
    analytic lower bound, 4 bytes per parameter in fp32 — which inference never allocates."""
    import torch

    from archbench.measure.speed import measure_speed

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 1024))
    grads_mb = sum(p.numel() for p in model.parameters()) * 4 / 2 ** 20  # 16 MB
    res = measure_speed(model, (1024,), batch_size=4, warmup=1, repeats=3)
    assert res.train_peak_mem_mb >= grads_mb
    assert res.peak_mem_mb < grads_mb  # inference: activations of a batch of 4 only
