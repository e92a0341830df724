"""The command line: spec flags, JSON output, and one-line errors with exit code 2."""
import json
import subprocess
import sys

import pytest

from archbench.cli import main
from archbench.spec import ArchSpec


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_json_reports_params_and_shape(capsys):
    code, out, _ = run(capsys, "check", "--mixer", "shift", "--ffn", "msffn", "--img-size", "32",
                       "--num-classes", "10", "--json")
    assert code == 0
    row = json.loads(out.strip().splitlines()[-1])
    assert row["output_shape"] == [2, 10] and row["params"] > 0 and row["finite"]


def test_spec_prints_yaml_that_reloads(capsys, tmp_path):
    code, out, _ = run(capsys, "spec", "--mixer", "dmixer", "--ffn", "msffn", "--img-size", "64x32",
                       "--depths", "1,1,2,1", "--set", "drop_path=0.1", "--mixer-opt", "groups=3")
    assert code == 0
    spec = ArchSpec.from_yaml(out)
    assert spec.img_size == (64, 32) and spec.drop_path == 0.1
    assert [s.depth for s in spec.stages] == [1, 1, 2, 1]
    assert spec.stages[0].mixer_options.as_dict()["groups"] == 3
    path = tmp_path / "spec.yaml"
    path.write_text(out)
    code, out2, _ = run(capsys, "spec", "--spec", str(path))
    assert code == 0 and out2 == out


def test_spec_of_a_zoo_model_with_overrides(capsys):
    code, out, _ = run(capsys, "spec", "--model", "shiftvit_tiny", "--ffn", "msffn", "--json")
    assert code == 0
    spec = ArchSpec.from_json(out)
    assert {s.ffn for s in spec.stages} == {"msffn"} and spec.stages[2].depth == 18


@pytest.mark.parametrize("argv,needle", [
    (["check", "--mixer", "shfit"], "unknown token mixer 'shfit'"),
    (["check", "--mixer", "msa", "--dims", "100", "--heads", "3", "--img-size", "32"], "heads=3 does not divide dim=100"),
    (["check", "--mixer", "msa", "--img-size", "30", "--patch-size", "4"], "not divisible by patch_size 4"),
    (["check", "--mixer", "msa", "--depths", "0"], "depth must be a positive integer, got 0"),
    (["check", "--mixer", "msa", "--mlp-ratio", "-2"], "mlp_ratio must be a positive number"),
    (["spec", "--model", "deit_smal"], "unknown model 'deit_smal'"),
    (["spec", "--set", "colour"], "--set takes KEY=VALUE"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "archbench", "check", "--mixer", "cross-attn", "--img-size", "32",
                           "--dims", "32", "--depths", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["output_shape"] == [2, 1000]


@pytest.mark.parametrize("flag, registry", [("--mixer", "MIXERS"), ("--ffn", "FFNS"), ("--macro", "MACROS")])
def test_help_lists_every_registered_part(capsys, flag, registry):
    """A part added by one file shows in the model flags' help, which reads the registries
    (`pool` was missing from a hand-written list)."""
    import archbench.registry
    from archbench.grammar import load_parts

    load_parts()
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    line = out[out.rindex(f"{flag} {flag[2:].upper()}"):]  # the entry, not the usage line
    line = line[:line.index(" --", 3)]
    names = getattr(archbench.registry, registry).names()
    assert len(names) >= 2 and all(name in line for name in names), (names, line)


def test_check_table_title_is_one_line(capsys):
    """The title sits above the two-column table, not inside it (rich wrapped it to the
    narrow columns' width: "archbench check: one forward + backward pass / on random input")."""
    code, out, _ = run(capsys, "check", "--mixer", "none", "--img-size", "32", "--dims", "16", "--depths", "1")
    assert code == 0
    assert "archbench check: one forward + backward pass on random input" in out.splitlines()


def test_models_lists_the_zoo(capsys):
    code, out, _ = run(capsys, "models", "volo_*", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == [f"volo_d{i}" for i in range(1, 6)]
    assert all(r["params"] == r["params_ref"] for r in rows)


@pytest.mark.parametrize("argv,needle", [
    (["run", "--device", "tpu"], "unknown device 'tpu'; use cpu, cuda or cuda:N"),
    (["profile", "--model", "deit_tiny", "--device", "mps"], "device 'mps' is not supported"),
    (["ablate", "--vary", "mixer=shift,none", "--device", "cuda"], "no CUDA GPU is visible"),
    (["study", "shiftvit", "--quick", "--device", "cuda"], "no CUDA GPU is visible"),
    (["search", "x.yaml", "--device", "cuda:0"], "no CUDA GPU is visible"),
])
def test_bad_device_is_refused_before_any_work(capsys, argv, needle):
    """A device this machine lacks is one line (exit 2) at the edge, not a CUDA traceback mid-run."""
    import torch

    if "CUDA" in needle and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own exit for a bad flag value
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err.strip().splitlines()[-1] and "Traceback" not in err


def test_a_bug_is_a_traceback_not_a_usage_line(monkeypatch, capsys):
    # a ValueError that is not archbench's UsageError (here: a library's, as Pillow 13 raised from
    # inside timm's RandAugment) is a bug: it propagates (traceback, exit 1), never "error: ..." exit 2
    def broken(*a, **k):
        raise ValueError("bits must be between or equal to 1 and 8")

    monkeypatch.setattr("archbench.train.run.run_experiment", broken)
    with pytest.raises(ValueError, match="bits must be"):
        main(["run", "--mixer", "shift", "--dims", "16", "--depths", "1", "--img-size", "8", "--epochs", "1",
              "--out", ""])
    assert "error:" not in capsys.readouterr().err


def test_epoch_lines_say_what_is_left():
    """Each epoch's line ends with the time left at the pace so far (what a batch job's log shows,
    where no progress bar is drawn); the last epoch's has none."""
    import io

    from rich.console import Console

    from archbench.cli.console import _duration, training_progress

    assert [_duration(s) for s in (4, 59.6, 185, 7623, 273700)] == ["4s", "1m00s", "3m05s", "2h07m", "3d04h"]
    out = io.StringIO()
    m = {"loss": 1.0, "top1": 50.0, "top5": 90.0, "train_throughput": 10.0, "epoch_seconds": 1.0}
    with training_progress(Console(file=out, width=200), 3, 2, quiet=False) as (_, on_step, on_epoch):
        for epoch in range(3):
            on_step(epoch, 0, 1.0)
            on_epoch(epoch + 1, m)
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("epoch")]
    assert len(lines) == 3 and all(" eta " in ln for ln in lines[:2]) and " eta " not in lines[2]
