"""Training every arm × seed of an ablation, one results row each, resumable.

Rows are appended to ``<out>/runs.parquet|csv`` as each run finishes (atomically, under a
file lock), so an interrupted ablation keeps what finished; a rerun of the same command
skips every (arm, seed) whose row is there (keyed by spec + recipe + data, so a changed
recipe trains anew). ``jobs > 1`` trains several runs at once in worker processes (on a
GPU, small models leave most of it idle; on several GPUs the runs are spread over them).

``--seeds auto`` (:class:`AutoSeeds`, :func:`run_auto`) trains in rounds: every arm starts
with ``min_seeds`` seeds, and each round gives one more seed to every arm whose paired
interval is still wider than the target width, until it is narrow enough or has
``max_seeds``; the base arm always gets every seed any arm has, so every seed pairs. An
arm's seeds are read back from the table (every seed up to the highest it has), so a rerun
of the same command replays the same decisions and trains nothing new.
"""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from archbench.ablate.plan import Ablation, Arm
from archbench.results import read_table, save_rows, table_path
from archbench.train.job import threads_per_process


TABLE = "runs"  # every run's row: <out>/runs.parquet and .csv


def table_stem(abl: Ablation) -> Path:
    return Path(abl.out) / TABLE


def finished(abl: Ablation) -> set[tuple[str, int]]:
    """(run_key, seed) of the rows already in the table."""
    stem = table_stem(abl)
    if not table_path(stem).exists():
        return set()
    df = read_table(stem)
    if "run_key" not in df:
        return set()
    return {(k, int(s)) for k, s in zip(df["run_key"], df["seed"])}


def elsewhere(*abls: Ablation) -> dict[str, int]:
    """Runs in the (shared) table that are these ablations' arms and seeds but were trained under
    other numerics, so they do not count here: numerics → count. Lets the CLI say why they are
    trained again."""
    import dataclasses

    stem = table_stem(abls[0])
    if not table_path(stem).exists():
        return {}
    rows = set(zip(*[read_table(stem)[c] for c in ("run_key", "seed")]))
    out = {}
    for dev in ("cuda", "cpu"):
        others = [dataclasses.replace(a, device=dev) for a in abls]
        if others[0].numerics == abls[0].numerics:
            continue
        keys = {(o.run_key(arm), s) for o in others for arm in o.arms for s in o.seeds}
        n = len(keys & {(k, int(s)) for k, s in rows})
        if n:
            out[others[0].numerics] = n
    return out


def pending(abl: Ablation) -> list[tuple[Arm, int]]:
    done = finished(abl)
    return [(arm, s) for arm in abl.arms for s in abl.seeds if (abl.run_key(arm), s) not in done]


def _label_row(abl: Ablation, arm: Arm, seed: int, row: dict[str, Any], section: str | None) -> dict[str, Any]:
    row = dict(row)
    row.update({
        "ablation": abl.name, "section": section or "", "arm": arm.id, "is_base": arm.is_base,
        "factors": json.dumps(arm.labels), "run_key": abl.run_key(arm), "seed": seed, "numerics": abl.numerics,
        "depths": "-".join(str(s.depth) for s in arm.spec.stages),
        "dims": "-".join(str(s.dim) for s in arm.spec.stages),
        "budget": arm.match.describe() if arm.match and not arm.is_base else "",
        "command": abl.command,
    })
    row["name"] = f"{abl.name}: {arm.id}"
    return row


def _payload(abl: Ablation, arm: Arm, seed: int, device: str, threads: int | None = None) -> dict[str, Any]:
    """One (arm, seed) run as ``archbench.train.job`` takes it."""
    ex = abl.execution
    return {"spec": arm.spec.to_json(), "recipe": abl.recipe.as_dict(), "seed": seed, "dataset": abl.dataset,
            "device": device, "threads": threads, "inputs": ex.inputs,
            "checkpoint_dir": ex.checkpoint_dir(abl.run_key(arm), seed), "checkpoint_every": ex.checkpoint_every}


def _train_one(payload: dict[str, Any]) -> dict[str, Any]:
    """Worker: one run (module-level so that a process pool can pickle it)."""
    from archbench.train.job import run_payload

    return run_payload(payload)


def _torchrun_one(payload: dict[str, Any], nproc: int, gpus: list[int] | None) -> dict[str, Any]:
    """One run as a torchrun job of ``nproc`` processes (on ``gpus``, when on CUDA); its row,
    or a failed row carrying the end of the job's output."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="archbench-job-") as tmp:
        src, dst = Path(tmp) / "payload.json", Path(tmp) / "row.json"
        src.write_text(json.dumps(payload))
        env = {**os.environ, "OMP_NUM_THREADS": str(payload.get("threads") or 1)}
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "archbench.train.job", str(src), str(dst)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if dst.exists():
            return json.loads(dst.read_text())
        lines = (res.stderr or res.stdout).strip().splitlines()
        # the workers' own last error line says why; torchrun's summary after it does not
        why = [ln for ln in lines if "Error" in ln or "error:" in ln] or lines[-3:]
        return {"status": "failed", "error": f"torchrun job exited {res.returncode}: {why[-1].strip()}"[:500],
                "top1": None, "wall_seconds": 0.0, "world_size": nproc}


def _gpu_groups(device: str, nproc: int, jobs: int) -> list[list[int] | None]:
    """The GPUs of each of ``jobs`` concurrent torchrun jobs (None off CUDA)."""
    if not device.startswith("cuda"):
        return [None] * jobs
    import torch

    n = max(1, torch.cuda.device_count())
    return [[(j * nproc + k) % n for k in range(nproc)] for j in range(jobs)]


def run_jobs(abl: Ablation, todo: Iterable[tuple[Arm, int]], *, jobs: int = 1,
             sections: dict[str, str] | None = None,
             on_done: Callable[[dict[str, Any]], None] | None = None,
             on_epoch: Callable[[Arm, int, int, dict], None] | None = None) -> list[dict[str, Any]]:
    """Train ``todo`` (arm, seed) pairs, appending each row as it finishes; returns the rows."""
    todo = list(todo)
    stem = table_stem(abl)
    sections = sections or {}
    rows = []

    def record(arm: Arm, seed: int, row: dict[str, Any]) -> None:
        row = _label_row(abl, arm, seed, row, sections.get(arm.key))
        save_rows(stem, [row])  # a table that cannot be written keeps the row in a JSON file it names
        rows.append(row)
        if on_done:
            on_done(row)

    nproc = abl.execution.nproc_per_run
    if nproc > 1:  # every run a torchrun job; `jobs` of them at once
        from concurrent.futures import ThreadPoolExecutor

        groups = _gpu_groups(abl.device, nproc, jobs)
        threads = threads_per_process(jobs * nproc)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_torchrun_one, _payload(abl, arm, seed, "cuda" if groups[i % jobs] else
                                                           abl.device, threads), nproc, groups[i % jobs]):
                       (arm, seed) for i, (arm, seed) in enumerate(todo)}
            for f in as_completed(futures):
                arm, seed = futures[f]
                record(arm, seed, f.result())
        return rows

    if jobs <= 1:
        from archbench.train.job import run_payload

        for arm, seed in todo:
            cb = (lambda e, m, arm=arm, seed=seed: on_epoch(arm, seed, e, m)) if on_epoch else None
            record(arm, seed, run_payload(_payload(abl, arm, seed, abl.device), callback=cb))
        return rows

    import multiprocessing as mp

    devices = _devices(abl.device)
    threads = threads_per_process(jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {}
        for i, (arm, seed) in enumerate(todo):
            futures[pool.submit(_train_one, _payload(abl, arm, seed, devices[i % len(devices)], threads))] = (arm, seed)
        try:
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for f in done:
                    arm, seed = futures.pop(f)
                    record(arm, seed, f.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return rows


def _devices(device: str) -> list[str]:
    if device == "cuda":
        import torch

        n = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(n)] or ["cuda"]
    return [device]


def load_runs(abl: Ablation) -> pd.DataFrame:
    """This ablation's rows (matching run keys), the latest row per (arm, seed)."""
    stem = table_stem(abl)
    if not table_path(stem).exists():
        return pd.DataFrame()
    df = read_table(stem)
    keys = {abl.run_key(a): a.id for a in abl.arms}
    df = df[df["run_key"].isin(keys) & df["seed"].isin(list(abl.seeds))].copy()
    df["arm"] = df["run_key"].map(keys)
    return df.drop_duplicates(["run_key", "seed"], keep="last")


@dataclass(frozen=True)
class AutoSeeds:
    """``--seeds auto``: seeds ``start``, ``start + 1``, ... per arm, at least ``min_seeds`` and at
    most ``max_seeds``, added one per round while the arm's paired ``conf`` interval is wider than
    ``width`` (its full width, high − low, in points). The stopping rule looks only at the spread
    of the differences, never at Δ itself, so it does not steer Δ."""

    width: float
    min_seeds: int = 3
    max_seeds: int = 10
    start: int = 0

    @property
    def seeds(self) -> list[int]:
        """Every seed an arm may get."""
        return list(range(self.start, self.start + self.max_seeds))

    def reached(self, row) -> bool:
        """Whether an arm-table row's interval is at most ``width`` wide (no interval: no)."""
        w = row["ci_high"] - row["ci_low"]
        return not math.isnan(w) and w <= self.width


def seed_counts(abls: Sequence[Ablation], auto: AutoSeeds) -> list[dict[str, int]]:
    """Per ablation, arm id → how many seeds (from ``auto.start``) it has now: at least
    ``min_seeds``, and up to the highest seed it has a row for (a gap left by an interrupted run
    is filled); the base arm: the most any arm of its ablation has, so that every seed pairs."""
    out = []
    for abl in abls:
        have: dict[str, int] = {}
        for key, seed in finished(abl):
            if auto.start <= seed < auto.start + auto.max_seeds:
                have[key] = max(have.get(key, 0), seed - auto.start + 1)
        counts = {a.id: max(auto.min_seeds, have.get(abl.run_key(a), 0)) for a in abl.arms}
        counts[abl.base.id] = max(counts.values())
        out.append(counts)
    return out


def missing(abls: Sequence[Ablation], counts: Sequence[dict[str, int]], start: int) -> list[tuple[Arm, int]]:
    """The (arm, seed) runs that ``counts`` asks for and the table lacks, each once (arms shared by
    several ablations are trained once)."""
    todo, seen = [], set()
    for abl, c in zip(abls, counts):
        done = finished(abl)
        for arm in abl.arms:
            for seed in range(start, start + c[arm.id]):
                key = (abl.run_key(arm), seed)
                if key not in done and key not in seen:
                    seen.add(key)
                    todo.append((arm, seed))
    return todo


def run_auto(abls: Sequence[Ablation], auto: AutoSeeds, train: Callable[[list[tuple[Arm, int]]], Any],
             on_round: Callable[[list[tuple[Arm, int]], list[str]], None] | None = None) -> list[dict[str, int]]:
    """Train ``abls`` (sharing one runs table) in rounds under ``auto``; ``train(todo)`` trains and
    records a list of (arm, seed); ``on_round(todo, widened)`` is told each round first (widened:
    the arms given a seed because their interval is too wide; empty in a round that trains the
    seeds the arms have so far). Returns the final seed counts per ablation (arm id → seeds)."""
    from archbench.ablate.report import arm_table

    abls = [replace(a, seeds=auto.seeds) for a in abls]
    last = None
    while True:
        counts = seed_counts(abls, auto)
        todo = missing(abls, counts, auto.start)
        widened: list[str] = []
        if not todo:  # every arm has its seeds: widen the arms whose interval is still too wide
            for abl, c in zip(abls, counts):
                table = arm_table(abl, load_runs(abl))
                for _, r in table[~table["base"]].iterrows():
                    if not auto.reached(r) and c[r["arm"]] < auto.max_seeds:
                        c[r["arm"]] += 1
                        widened.append(r["arm"])
                c[abl.base.id] = max(c.values())
            todo = missing(abls, counts, auto.start)
            if not todo:
                return counts
        keys = {(abls[0].run_key(a), s) for a, s in todo}
        if keys == last:  # train() recorded nothing: stop rather than loop
            raise RuntimeError(f"{len(todo)} runs were trained but not recorded in {table_stem(abls[0])}")
        last = keys
        if on_round:
            on_round(todo, widened)
        train(todo)
