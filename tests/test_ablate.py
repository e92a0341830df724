"""Ablations: factor parsing, budget matching (checked on the built models), paired
statistics and their power (against hand-computed and independently computed cases), an
end-to-end 2-arm × 2-seed run on digits, resume without retraining (also after a SIGKILL or
Ctrl-C mid-ablation, one worker or two), ``--seeds auto`` (the widening rule on a scripted
table, and end to end on digits), and one-line errors for bad input."""
from __future__ import annotations

import math

import pytest

from archbench.ablate.budget import BudgetError, match_budget, measure
from archbench.ablate.factors import parse_vary
from archbench.ablate.plan import make_arms
from archbench.ablate.stats import mde, paired_diff, seeds_for_power, seeds_for_width, summarize, t_power
from archbench.builder import make_spec
from archbench.cli import main

BASE = dict(macro="pyramid", dims=(16, 32), depths=(1, 2), heads=(1, 2), img_size=16, num_classes=10, in_chans=1)


def test_parse_vary_aliases_fractions_and_brackets():
    f = parse_vary("shift_ratio=1/12,1/24")
    assert f.name == "mixer_options.ratio" and f.values == (1 / 12, 1 / 24) and f.labels == ("1/12", "1/24")
    d = parse_vary("depths=[1,2],[2,2]")
    assert d.values == ([1, 2], [2, 2])


@pytest.mark.parametrize("text,msg", [("colour=red,blue", "unknown factor 'colour'"), ("mixer=", "no values"),
                                      ("mixer=msa,msa", "repeated"), ("mixer", "NAME=V1,V2")])
def test_parse_vary_bad_input(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_vary(text)


def test_paired_stats_hand_computed():
    # diffs (arm - base) per seed: 1, 2, 3 → mean 2, sd 1, t(0.975, df=2) = 4.302653 (t table),
    # half width 4.302653 / sqrt(3) = 2.484138; t = 2 / (1/sqrt 3) = 3.4641 → p = 0.07418
    p = paired_diff({0: 10.0, 1: 20.0, 2: 30.0}, {0: 11.0, 1: 22.0, 2: 33.0, 3: 99.0})
    assert p.n == 3 and p.seeds == (0, 1, 2)
    assert p.mean == pytest.approx(2.0) and p.std == pytest.approx(1.0)
    assert p.ci_low == pytest.approx(2 - 2.484138, abs=1e-5) and p.ci_high == pytest.approx(2 + 2.484138, abs=1e-5)
    assert p.p_value == pytest.approx(0.07418, abs=1e-4) and p.covers_zero()
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s.mean == 2.5 and s.std == pytest.approx(math.sqrt(5 / 3))
    assert math.isnan(paired_diff({0: 1.0}, {0: 2.0}).ci_low)  # one pair: no interval


def test_power_of_the_paired_t_test():
    from scipy import integrate, optimize, stats

    # n = 3 pairs, SD of the differences 1, two-sided α = 0.05, 80 % power: MDE 3.26404 SDs. Independent
    # check, not through the noncentral t: power = E_V[P(|Z + δ√n| > t_crit √(V/df))] with V ~ χ²(df),
    # integrated numerically, then solved for δ.
    def power_by_integration(d, n=3, alpha=0.05):
        df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)
        def f(v):
            c = crit * math.sqrt(v / df)
            return (stats.norm.sf(c - d * math.sqrt(n)) + stats.norm.cdf(-c - d * math.sqrt(n))) * stats.chi2.pdf(v, df)
        return integrate.quad(f, 0, math.inf, epsabs=1e-13, epsrel=1e-12)[0]

    independent = optimize.brentq(lambda d: power_by_integration(d) - 0.8, 0.1, 20, xtol=1e-12)
    assert independent == pytest.approx(3.26404, abs=1e-5)
    assert mde(3, 1.0) == pytest.approx(independent, rel=1e-7)
    assert mde(3, 2.5) == pytest.approx(2.5 * independent, rel=1e-7)  # scales with the SD
    assert t_power(2.0, 3) == pytest.approx(power_by_integration(2.0), abs=1e-9)
    assert mde(10, 1.0) == pytest.approx(0.99600, abs=1e-5)  # n = 10, by the same integration
    assert mde(10, 1.0) == pytest.approx(optimize.brentq(
        lambda d: power_by_integration(d, n=10) - 0.8, 0.1, 20, xtol=1e-12), rel=1e-7)
    assert math.isnan(mde(1, 1.0)) and mde(3, 0.0) == 0.0

    # seeds to detect Δ = 1 SD: Guenther's (1981) approximation n ≈ (z.975 + z.8)² / d² + z.975² / 2
    # = (1.95996 + 0.84162)² + 1.95996² / 2 = 9.77 → 10; exact: MDE(10) = 0.996 ≤ 1 < MDE(9)
    assert seeds_for_power(1.0, 1.0) == 10 and mde(9, 1.0) > 1.0 >= mde(10, 1.0)
    assert seeds_for_power(-1.0, 1.0) == 10 and seeds_for_power(0.0, 1.0) == math.inf
    # a 95 % interval 2 SDs wide (±1): 2 t(.975, n-1) / √n ≤ 2; t table: t(.975, 5) = 2.571, t(.975, 6) = 2.447
    # → n = 6: 2.571 / 2.449 = 1.05 > 1; n = 7: 2.447 / 2.646 = 0.925
    assert seeds_for_width(1.0, 2.0) == 7


@pytest.mark.parametrize("metric", ["gmacs", "params"])
def test_matched_arms_land_within_tolerance(metric):
    arms = make_arms(BASE, [parse_vary("mixer=msa,shift,none")], match=metric, tol=0.05)
    target = arms[0].cost.get(metric)
    for arm in arms[1:]:
        built = measure(arm.spec).get(metric)  # counted again on the built model
        assert abs(built - target) <= 0.05 * target, (arm.id, built, target)
        assert arm.match.after["depths"] != arm.match.before["depths"]  # shift is cheaper: depth was added
    assert arms[0].spec.macro == arms[1].spec.macro == "pyramid"


def test_width_matching_and_unreachable_budget():
    spec = make_spec(**{**BASE, "mixer": "shift"})
    target = measure(make_spec(**BASE)).gmacs
    s, m = match_budget(spec, target, adjust="width", tol=0.1)
    assert abs(measure(s).gmacs - target) <= 0.1 * target and m.after["dims"] != m.before["dims"]
    with pytest.raises(BudgetError, match="the closest is"):
        match_budget(spec, target * 1000, adjust="depth", tol=0.01)


def test_ablate_end_to_end_then_resume(tmp_path, capsys):
    out = tmp_path / "abl"
    argv = ["ablate", "--mixer", "shift", "--dims", "12,24", "--depths", "1,1", "--heads", "1,2",
            "--vary", "ffn=mlp,msffn", "--seeds", "2", "--epochs", "1", "--limit-train", "200", "--limit-test", "100",
            "--out", str(out), "--json"]
    assert main(argv) == 0
    import json

    import pandas as pd

    table = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["arm"] for r in table] == ["ffn=mlp", "ffn=msffn"] and all(r["seeds"] == 2 for r in table)
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 4 and set(runs["seed"]) == {0, 1}
    # paired rows: same seed → same data order; the diff in the table is the mean of the per-seed diffs
    a = runs[runs["arm"] == "ffn=mlp"].set_index("seed")["top1"]
    b = runs[runs["arm"] == "ffn=msffn"].set_index("seed")["top1"]
    assert table[1]["diff"] == pytest.approx(float((b - a).mean()))
    for f in ("arms.csv", "arms.md", "top1_vs_gmacs.png", "top1_vs_throughput.svg"):
        assert (out / f).exists()
    # rerun: nothing retrained; one more seed trains exactly the two missing runs
    assert main(argv) == 0
    assert len(pd.read_parquet(out / "runs.parquet")) == 4
    argv3 = [x if x != "2" or argv[i - 1] != "--seeds" else "3" for i, x in enumerate(argv)]
    assert main(argv3) == 0
    assert len(pd.read_parquet(out / "runs.parquet")) == 6


def test_seeds_auto_widens_only_the_wide_arms(tmp_path):
    """The widening rule on scripted accuracies (no training): an arm whose interval is already
    narrow stops at the minimum, a noisy one goes to the maximum, the base gets every seed; an arm
    shared by two ablations is trained once; a second call trains nothing."""
    import dataclasses

    from archbench.ablate.plan import Ablation
    from archbench.ablate.report import arm_table
    from archbench.ablate.runner import AutoSeeds, load_runs, run_auto, table_stem
    from archbench.results import append_rows
    from archbench.train.loop import Recipe

    base, tight, noisy, other = make_arms(BASE, [parse_vary("mlp_ratio=4,2,1,3")])
    abl1 = Ablation(name="a", arms=[base, tight, noisy], seeds=[0], recipe=Recipe(epochs=1), out=str(tmp_path))
    abl2 = dataclasses.replace(abl1, name="b", arms=[dataclasses.replace(noisy, is_base=True), other])
    z = [0.3, -0.8, 0.5, 0.1, -0.2, 0.9]  # seed effects shared by every arm (pairing)
    top1 = {base.id: lambda s: 70 + z[s],
            tight.id: lambda s: 71 + z[s] + 0.001 * s,      # Δ ≈ 1, SD 0.001: width ≈ 0.005 at 3 seeds
            noisy.id: lambda s: 70 + z[s] + 3 * (-1) ** s,  # Δ = ±3: never within 0.5
            other.id: lambda s: 70.5 + z[s] + 3 * (-1) ** s + 0.001 * s}  # vs noisy: as tight vs base
    trained = []

    def train(todo):
        trained.extend((a.id, s) for a, s in todo)
        append_rows(table_stem(abl1), [{"run_key": abl1.run_key(a), "seed": s, "status": "ok", "top1": top1[a.id](s),
                                        "device": "cpu", "throughput": 1.0, "train_seconds": 1.0, "wall_seconds": 1.0}
                                       for a, s in todo])

    auto = AutoSeeds(width=0.5, min_seeds=3, max_seeds=5)
    counts = run_auto([abl1, abl2], auto, train)
    assert counts == [{base.id: 5, tight.id: 3, noisy.id: 5}, {noisy.id: 5, other.id: 3}]
    assert len(trained) == len(set(trained)) == 5 + 3 + 5 + 3
    full = dataclasses.replace(abl1, seeds=list(range(5)))
    table = arm_table(full, load_runs(full)).set_index("arm")
    assert list(table["seeds"]) == [5, 3, 5]
    assert table.loc[tight.id, "ci_high"] - table.loc[tight.id, "ci_low"] <= 0.5
    assert table.loc[noisy.id, "mde80"] == pytest.approx(mde(5, table.loc[noisy.id, "diff_sd"]))
    trained.clear()
    assert run_auto([abl1, abl2], auto, train) == counts and trained == []


def test_ablate_seeds_auto_end_to_end_then_rerun(tmp_path, capsys):
    import json

    import pandas as pd

    out = tmp_path / "auto"
    argv = ["ablate", "--mixer", "shift", "--ffn", "mlp", "--dims", "16", "--depths", "1", "--img-size", "8",
            "--epochs", "1", "--limit-train", "100", "--limit-test", "50", "--vary", "mlp_ratio=4,2",
            "--seeds", "auto", "--ci-width", "0.001", "--min-seeds", "2", "--max-seeds", "3", "--out", str(out), "--json"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    table = json.loads(text.strip().splitlines()[-1])
    assert [(r["arm"], r["seeds"]) for r in table] == [("mlp_ratio=4", 3), ("mlp_ratio=2", 3)]
    assert "round 1: 2 runs" in text and "stopped at 3 seeds" in text and "mlp_ratio=2 (width" in text
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 6 and set(runs[runs["is_base"]]["seed"]) == {0, 1, 2} == set(runs["seed"])
    assert table[1]["mde80"] == pytest.approx(mde(3, table[1]["diff_sd"]))
    assert "MDE 80%" in (out / "arms.md").read_text()
    assert main(argv) == 0  # the same command again: nothing to train
    assert "trained 0 runs" in capsys.readouterr().out
    assert len(pd.read_parquet(out / "runs.parquet")) == 6


@pytest.mark.parametrize("extra,msg", [
    (["--vary", "colour=red"], "unknown factor"),
    (["--vary", "mixer="], "no values"),
    (["--vary", "mixer=msa,shift", "--match", "gmacs", "--tol", "0.0001"], "closest"),
    (["--vary", "mixer=shift,none", "--seeds", "0"], "--seeds"),
    (["--vary", "mixer=shift,none", "--seeds", "many"], "--seeds takes a number of seeds or auto"),
    (["--vary", "mixer=shift,none", "--seeds", "auto"], "--seeds auto needs --ci-width"),
    (["--vary", "mixer=shift,none", "--ci-width", "2"], "--ci-width only applies with --seeds auto"),
    (["--vary", "mixer=shift,none", "--seeds", "auto", "--ci-width", "0"], "--ci-width must be > 0"),
    (["--vary", "mixer=shift,none", "--seeds", "auto", "--ci-width", "2", "--max-seeds", "1"], "--max-seeds must be >= 2"),
    (["--vary", "mixer=shift,none", "--seeds", "auto", "--ci-width", "2", "--min-seeds", "5", "--max-seeds", "4"],
     "--min-seeds 5 is above --max-seeds 4"),
])
def test_ablate_bad_input_one_line_exit_2(extra, msg, capsys, tmp_path):
    rc = main(["ablate", "--dims", "12,24", "--depths", "1,1", "--heads", "1,2", "--macro", "pyramid",
               "--out", str(tmp_path / "x"), "--dry-run", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1, err


def test_study_quick_dry_run_builds_matched_sections(capsys):
    assert main(["study", "shiftvit", "--quick", "--dry-run"]) == 0
    text = capsys.readouterr().out
    for sec in ("mixer:", "gamma:", "mlp_ratio:", "components:"):
        assert sec in text
    assert main(["study", "nosuch", "--dry-run"]) == 2
    assert main(["study", "shiftvit", "--quick", "--dry-run", "--seeds", "auto"]) == 2
    assert "--seeds auto needs --ci-width" in capsys.readouterr().err
    from archbench.cli.study import PROFILE_NAMES
    from archbench.studies.shiftvit import PROFILES

    assert set(PROFILE_NAMES) == set(PROFILES)  # the parser's choices are the profiles there are


@pytest.mark.parametrize("jobs,sig", [("1", "SIGKILL"), ("2", "SIGINT")])
def test_ablate_interrupted_mid_run_resumes(tmp_path, capsys, jobs, sig):
    """A crash (SIGKILL) or Ctrl-C (SIGINT to the process group, as a terminal sends it) while arms are
    training keeps the finished runs; rerunning trains only the rest and leaves the kept rows untouched."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd

    out = tmp_path / "abl"
    # 2 arms x 3 seeds: after the first rows land, at least two more rounds of runs are left even
    # with 2 jobs, so the signal lands mid-ablation also when the machine is slow to deliver it
    # (with 2 seeds, 2 jobs and the other test worker busy, all 4 runs once finished first)
    n = 6
    args = ["ablate", "--mixer", "shift", "--dims", "12,24", "--depths", "1,1", "--heads", "1,2",
            "--vary", "mlp_ratio=4,2", "--seeds", "3", "--epochs", "1", "--limit-train", "200", "--limit-test", "100",
            "--out", str(out)]
    # a console line longer than the terminal wraps, and with it the message checked below (the
    # table's path is in it, longer under pytest-xdist's temporary folders): wide lines, and
    # the words compared with the line breaks taken out
    proc = subprocess.Popen([sys.executable, "-m", "archbench", *args, "--jobs", jobs], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "COLUMNS": "400"})
    deadline = time.monotonic() + 300
    while not (out / "runs.parquet").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=120)
    kept = pd.read_parquet(out / "runs.parquet")
    # the kill must land mid-ablation, or this test would show nothing
    assert 1 <= len(kept) < n, (len(kept), stdout, stderr)
    if sig == "SIGINT":
        assert proc.returncode == 130
        assert f"rerun the same command to train the other {n - len(kept)}" in " ".join((stdout + stderr).split())
    else:
        assert proc.returncode == -signal.SIGKILL

    capsys.readouterr()
    assert main(args) == 0
    assert f"{n - len(kept)} of {n} runs to train ({len(kept)} already" in capsys.readouterr().out
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == n and not runs.duplicated(["run_key", "seed"]).any()
    # the runs finished before the interruption were not retrained: same rows, same timestamps
    again = runs.set_index(["run_key", "seed"]).loc[kept.set_index(["run_key", "seed"]).index]
    assert list(again["timestamp"]) == list(kept["timestamp"]) and list(again["top1"]) == list(kept["top1"])


def test_arm_table_pools_accuracy_but_not_speed_across_devices():
    """Seeds trained on different machines pool for accuracy; img/s and s/run come from the
    machine that trained most runs, so a slow CPU seed cannot drag a GPU arm's speed."""
    import pandas as pd

    from archbench.ablate.plan import Ablation
    from archbench.ablate.report import arm_table, to_markdown
    from archbench.train.loop import Recipe

    arms = make_arms(BASE, [parse_vary("mlp_ratio=4,2")])
    abl = Ablation(name="t", arms=arms, seeds=[0, 1, 2], recipe=Recipe(epochs=1))
    gpu, cpu = "NVIDIA H100 80GB HBM3", "Some CPU @ 2.0GHz (2 threads)"
    rows = [(arms[0].id, s, 70.0 + s, gpu, 1000.0, 100.0) for s in range(3)]
    rows += [(arms[1].id, 0, 71.0, gpu, 900.0, 120.0),
             (arms[1].id, 1, 72.0, cpu, 30.0, 2000.0), (arms[1].id, 2, 73.0, cpu, 40.0, 2200.0)]
    runs = pd.DataFrame(rows, columns=["arm", "seed", "top1", "device", "throughput", "train_seconds"])
    runs["status"], runs["wall_seconds"] = "ok", runs["train_seconds"] + 10
    t = arm_table(abl, runs).set_index("arm")
    r2 = t.loc[arms[1].id]
    assert r2["seeds"] == 3 and r2["top1_mean"] == pytest.approx(72.0) and r2["diff"] == pytest.approx(1.0)
    assert r2["throughput"] == 900.0 and r2["train_s_mean"] == 120.0 and r2["speed_device"] == gpu
    assert r2["wall_s_total"] == pytest.approx(130 + 2010 + 2210)
    md = to_markdown(t.reset_index())
    assert "runs per device" in md and "H100 80GB HBM3 ×1, CPU (2 threads) ×2; img/s, s/run on H100 80GB HBM3" in md
    # one device: no extra column
    assert "runs per device" not in to_markdown(arm_table(abl, runs[runs["device"] == gpu]))


def test_run_identity_includes_numerics(tmp_path):
    """A GPU trains under bf16 autocast, a CPU in fp32 (train.loop): such runs must not pair or
    stand in for each other. GPU keys stay as they were, so the committed study still resumes."""
    import dataclasses
    import json
    from pathlib import Path

    import pandas as pd

    from archbench.ablate.plan import Ablation, Arm
    from archbench.ablate.runner import elsewhere, pending
    from archbench.results import append_rows
    from archbench.spec import ArchSpec
    from archbench.train.loop import Recipe

    committed = Path(__file__).resolve().parents[1] / "results/studies/shiftvit/runs.parquet"
    row = pd.read_parquet(committed).iloc[0]
    # the committed runs were trained with archbench 0.1's init: named, they keep their keys
    spec = ArchSpec.from_json(row["spec"]).replace(init="archbench-0.1")
    recipe = Recipe(**{k: v for k, v in json.loads(row["recipe"]).items() if not k.startswith("limit_")})
    arm = Arm(id=row["arm"], changes={}, labels={}, spec=spec, cost=None)
    data = {"name": row["dataset"].split(":")[0], "download": False, "limit_train": None, "limit_test": None}
    gpu = Ablation(name="x", arms=[arm], seeds=[0], recipe=recipe, dataset=data, device="cuda")
    assert gpu.run_key(arm) == row["run_key"]  # recorded by the H100 run
    # the same spec under the pyramid's official (ShiftViT) init is another model: another key
    official = dataclasses.replace(arm, spec=ArchSpec.from_json(row["spec"]))
    assert gpu.run_key(official) != row["run_key"]
    cpu = dataclasses.replace(gpu, device="cpu")
    assert cpu.run_key(arm) != gpu.run_key(arm) and (cpu.numerics, gpu.numerics) == ("fp32", "bf16 autocast")

    cpu = dataclasses.replace(cpu, out=str(tmp_path), seeds=[0, 1], arms=[dataclasses.replace(arm, is_base=True)])
    append_rows(tmp_path / "runs", [{"run_key": cpu.run_key(arm), "seed": s, "status": "ok"} for s in (0, 1)])
    gpu = dataclasses.replace(cpu, device="cuda")
    assert len(pending(cpu)) == 0 and len(pending(gpu)) == 2
    assert elsewhere(gpu) == {"fp32": 2} and elsewhere(cpu) == {}


@pytest.mark.slow  # builds and matches the profile's arms, writes every table and plot: ~40 s
def test_study_report_only_needs_no_images(tmp_path, capsys):
    """--report-only reports what is trained: on a machine without CIFAR-10 (no --data-dir)
    the cifar10 profile still writes its report (every arm untrained here) instead of
    asking for the data it would not read."""
    out = tmp_path / "study"
    assert main(["study", "shiftvit", "--profile", "cpu", "--sections", "mlp_ratio", "--report-only",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    assert "--data-dir" not in capsys.readouterr().err
    assert (out / "report.md").exists()


def test_dataset_shapes_known_without_reading_match_the_data():
    """SHAPES (what --report-only uses for run keys) against the loaded data where it ships
    (digits; CIFAR is not on a test machine)."""
    from archbench.train.data import SHAPES, load_dataset

    d = load_dataset("digits")
    assert SHAPES["digits"] == (d.num_classes, d.in_chans)
