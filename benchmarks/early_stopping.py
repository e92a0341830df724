"""Pareto-aware early stopping against none, at equal samplers and seeds: hypervolume per hour.

Each repeat runs the same random-sampler seed twice over search_spaces/early_stopping.yaml
(120 configurations; top-1 ↑ vs GMACs ↓): once with ``pruner: none`` (every trial to its last
epoch) and once with ``pruner: pareto`` (archbench/search/halving.py). The random sampler draws
the same configurations in the same order whatever the pruner does, so the two runs of a repeat
differ only by the early stops. The two settings alternate, so slow drift of the machine hits both.

Hypervolume: top-1 (%) against GMACs, reference point (0 %, 1.1 × the largest GMACs any trial of
any run measured) — the worst accuracy and a little beyond the costliest model, so every trained
point counts and the reference is the same for every run.

    OMP_NUM_THREADS=1 python benchmarks/early_stopping.py --repeats 3 --trials 60
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import optuna
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from archbench.results import git_commit  # noqa: E402
from archbench.search.report import hypervolume_history, trials_table  # noqa: E402


def run_one(space: dict, pruner: str, seed: int, trials: int, work: Path) -> pd.DataFrame:
    name = f"{pruner}_s{seed}"
    spec = {**space, "name": name, "pruner": {"name": pruner}, "sampler": {"name": "random", "seed": seed}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "archbench", "search", str(path), "--trials", str(trials),
                    "--results-dir", str(work), "--json"], check=True, stdout=subprocess.DEVNULL)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{work / (name + '.db')}")
    df = trials_table(study).assign(run=name, pruner=pruner, seed=seed, wall=time.time() - t0)
    return df


def markdown(df: pd.DataFrame) -> str:
    def cell(v):
        if v is None or (isinstance(v, float) and v != v):
            return "—"
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return "\n".join(["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
                     + ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)])


def time_to(history: pd.DataFrame, level: float) -> float | None:
    hit = history[history["hypervolume"] >= level]
    return float(hit["seconds"].iloc[0]) if len(hit) else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--space", default=str(ROOT / "search_spaces" / "early_stopping.yaml"))
    ap.add_argument("--out", default=str(ROOT / "results" / "search" / "early_stopping"))
    ap.add_argument("--from-trials", metavar="CSV", help="re-render the report from a run's trials table "
                                                          "(OUT_trials.csv) instead of running the searches")
    args = ap.parse_args()
    space = yaml.safe_load(Path(args.space).read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.from_trials:
        trials = pd.read_csv(args.from_trials, parse_dates=["datetime_start", "datetime_complete"])
        trials["trained"] = trials["trained"].astype(bool)
        measured = trials.attrs["measured"] = Path(args.from_trials).name
    else:
        frames = []
        with tempfile.TemporaryDirectory(prefix="archbench-es-") as tmp:
            for seed in range(args.repeats):
                for pruner in ("none", "pareto"):
                    df = run_one(space, pruner, seed, args.trials, Path(tmp))
                    frames.append(df)
                    print(f"seed {seed} {pruner}: {df['wall'].iloc[0]:.0f} s, {len(df)} trials", file=sys.stderr)
        trials = pd.concat(frames, ignore_index=True)
        measured = None
    ref = (0.0, 1.1 * float(trials["gmacs"].max()))
    rows, histories = [], {}
    for (seed, pruner), df in trials.groupby(["seed", "pruner"]):
        h = hypervolume_history(df, "gmacs", ref)
        histories[(seed, pruner)] = h
        own = df[df["reused_from"].isna()]
        stopped = own[own["stopped_at"].notna()]
        span = (pd.to_datetime(df["datetime_complete"]).max() - pd.to_datetime(df["datetime_start"]).min())
        rows.append({"seed": seed, "pruner": pruner, "trials": len(own), "trained_to_end": int(
            ((own["state"] == "COMPLETE") & own["trained"]).sum()), "stopped": len(stopped),
            "stopped_at_rungs": json.dumps({int(k): int(v) for k, v in stopped["stopped_at"].value_counts()
                                           .sort_index().items()}),
            "minutes": span.total_seconds() / 60, "trials_per_hour": len(own) / (span.total_seconds() / 3600),
            "final_hypervolume": float(h["hypervolume"].iloc[-1]) if len(h) else 0.0})
    table = pd.DataFrame(rows)
    # the time each run needs to reach a share of its repeat's no-stopping final hypervolume
    levels = (0.95, 0.97, 0.99)
    ratio = []
    for seed in sorted(table["seed"].unique()):
        final = table[(table["seed"] == seed) & (table["pruner"] == "none")]["final_hypervolume"].iloc[0]
        row = {"seed": seed}
        for level in levels:
            a, b = (time_to(histories[(seed, p)], level * final) for p in ("none", "pareto"))
            row[f"none_min_{level:.0%}"] = None if a is None else a / 60
            row[f"pareto_min_{level:.0%}"] = None if b is None else b / 60
            row[f"speedup_{level:.0%}"] = (a / b) if a and b else None
        row["pareto_final_share"] = table[(table["seed"] == seed) & (table["pruner"] == "pareto")][
            "final_hypervolume"].iloc[0] / final
        row["wall_ratio"] = (table[(table["seed"] == seed) & (table["pruner"] == "none")]["minutes"].iloc[0]
                             / table[(table["seed"] == seed) & (table["pruner"] == "pareto")]["minutes"].iloc[0])
        ratio.append(row)
    ratio = pd.DataFrame(ratio)
    table.to_csv(out.with_suffix(".csv"), index=False)
    if measured is None:
        trials.drop(columns=["spec", "history", "provenance"]).to_csv(out.parent / f"{out.name}_trials.csv",
                                                                      index=False)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=130)
    colours = plt.get_cmap("tab10")
    for (seed, pruner), h in sorted(histories.items()):
        ax.step(h["seconds"] / 60, h["hypervolume"], where="post", color=colours(seed),
                ls="-" if pruner == "none" else "--", label=f"seed {seed}, {'no stopping' if pruner == 'none' else 'pareto halving'}")
    ax.set_xlabel("wall-clock time since the study's first trial (minutes)")
    ax.set_ylabel(f"hypervolume (top-1 % × GMACs; reference 0 %, {ref[1]:.4g} GMACs)")
    ax.set_title(f"{args.trials} trials a run, random sampler: hypervolume over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"))
    plt.close(fig)

    threads = torch.get_num_threads()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    def median(col):
        return ratio[col].dropna().median() if ratio[col].notna().any() else None
    lines = [
        "# Early stopping in multi-objective search: Pareto-aware successive halving vs none",
        "",
        *([f"(Report re-rendered by `--from-trials {measured}` at the commit below, from the trials of the "
           f"searches this command ran {trials['datetime_start'].min():%Y-%m-%d %H:%M}–"
           f"{trials['datetime_complete'].max():%H:%M} UTC.)", ""] if measured else []),
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python benchmarks/early_stopping.py --repeats {args.repeats} --trials {args.trials}`  ",
        f"Device: {cpu} ({os.cpu_count()} cores), {threads} threads, CPU, torch {torch.__version__}, "
        f"optuna {optuna.__version__}, commit {git_commit()}, {datetime.now(timezone.utc).isoformat(timespec='seconds')}  ",
        f"Space: [`search_spaces/early_stopping.yaml`](../../search_spaces/early_stopping.yaml) — 120 configurations "
        f"(mixer × FFN × width × last-stage depth × MLP ratio; a four-stage pyramid), digits at 8×8, 8 epochs a trial, top-1 ↑ vs GMACs ↓. "
        f"Random sampler, seeds 0..{args.repeats - 1}: within a seed both runs draw the same configurations in the "
        f"same order. Pareto halving: rungs at epochs 1, 2, 4, η = 3 (archbench/search/halving.py).  ",
        f"Hypervolume reference point: (0 % top-1, {ref[1]:.4g} GMACs = 1.1 × the largest GMACs measured).",
        "",
        "## Per run",
        "",
        markdown(table),
        "",
        "## Time to 95 / 97 / 99 % of the no-stopping run's final hypervolume",
        "",
        "Minutes from the first trial's start; `speedup_L` = no stopping's time / pareto's to reach L of the "
        "no-stopping run's final hypervolume (— where the pareto run never reached it); `pareto_final_share`: "
        "the pareto run's final hypervolume over the no-stopping run's; `wall_ratio`: the whole runs' times.",
        "",
        markdown(ratio),
        "",
        "Median speed-up to 99 %: " + (f"**{median('speedup_99%'):.2f}×**" if median("speedup_99%") else
                                       "**not reached** (no pareto run reached 99 %)") +
        f"; to 95 %: " + (f"**{median('speedup_95%'):.2f}×**" if median("speedup_95%") else "not reached") +
        f"; whole runs: {median('wall_ratio'):.2f}× faster, ending at {median('pareto_final_share'):.1%} of the "
        "hypervolume (goal: 3× — the same hypervolume in a third of the time).",
        "",
        "![hypervolume over time](early_stopping.png)",
        "",
        "Files: [early_stopping.csv](early_stopping.csv) (this table), "
        "[early_stopping_trials.csv](early_stopping_trials.csv) (every trial of every run, with why it stopped).",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
