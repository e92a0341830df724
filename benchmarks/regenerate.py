"""Re-run the committed results that are deterministic and compare them with what is committed.

Each check re-makes one result in a scratch folder with the command written beside it in
``results/``, then compares the columns that do not depend on the machine's speed or the
clock (parameters, GMACs, accuracies, per-epoch losses, specs, report tables) with the
committed file, value for value. Speed, time and provenance columns are left out by name.
Nothing under ``results/`` is written except this script's own report.

    python benchmarks/regenerate.py [--checks zoo,main,studies,search,early_stopping]

Writes ``results/regenerate.md``: per check, the command, the columns compared, and either
"identical" or each column that differs with its largest difference.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from archbench.results import provenance  # noqa: E402

RESULTS = ROOT / "results"


def sh(cmd: list[str], cwd: Path = ROOT) -> None:
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def differences(new: pd.DataFrame, old: pd.DataFrame, key: list[str], cols: list[str]) -> list[str]:
    """Per column that differs: what differs (rows missing on either side, largest numeric
    difference, or the count of unequal values)."""
    out = []
    new_keys, old_keys = set(map(tuple, new[key].astype(str).values)), set(map(tuple, old[key].astype(str).values))
    if new_keys != old_keys:
        out.append(f"rows: {len(old_keys - new_keys)} committed not regenerated, {len(new_keys - old_keys)} new")
    both = old.merge(new, on=key, suffixes=("_old", "_new"))
    for c in cols:
        if f"{c}_old" not in both:
            out.append(f"`{c}`: missing from the {'regenerated' if c in old else 'committed'} table")
            continue
        a, b = both[f"{c}_old"], both[f"{c}_new"]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            same = (a == b) | (a.isna() & b.isna())
            if not same.all():
                out.append(f"`{c}`: {int((~same).sum())} of {len(a)} differ, largest by {float((a - b).abs().max()):.3g}")
        else:
            same = (a.astype(str) == b.astype(str)) | (a.isna() & b.isna())
            if not same.all():
                out.append(f"`{c}`: {int((~same).sum())} of {len(a)} differ")
    return out


def check_zoo(tmp: Path) -> dict:
    cmd = ["archbench", "profile", "--all", "--no-speed", "--out", str(tmp / "profile")]
    sh(cmd)
    old, new = pd.read_csv(RESULTS / "zoo/profile.csv"), pd.read_csv(tmp / "profile.csv")
    cols = [c for c in old.columns if c.startswith(("params", "gmacs", "fvcore_", "ptflops_"))] + \
        ["macro", "mixers", "ffns", "img_size", "spec"]
    return {"cmd": cmd, "cols": cols, "diff": differences(new, old, ["name"], cols)}


def history(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        for m in json.loads(r["history"]):
            rows.append({"run": 0, "epoch": m["epoch"], **{k: m[k] for k in ("loss", "top1", "top5")}})
    return pd.DataFrame(rows)


def check_main(tmp: Path) -> dict:
    cmd = ["archbench", "run", "--mixer", "shift", "--ffn", "msffn", "--out", str(tmp / "digits")]
    sh(cmd)
    old, new = pd.read_csv(RESULTS / "main/digits.csv"), pd.read_csv(tmp / "digits.csv")
    cols = ["params", "gmacs", "top1", "top5", "spec"]
    diff = differences(new.assign(k=0), old.assign(k=0), ["k"], [c for c in cols if c in old])
    diff += differences(history(new), history(old), ["run", "epoch"], ["loss", "top1", "top5"])
    return {"cmd": cmd, "cols": cols + ["per-epoch loss, top-1, top-5"], "diff": diff}


def stand_in_folder(root: Path, classes: int = 10) -> Path:
    """An image folder with CIFAR-10's 10 classes and 3 channels, one tiny image a class: what
    ``--report-only`` reads of an image folder (classes and channels, part of each run's key)
    when it reports runs trained on CIFAR-10 as a folder, without the images themselves."""
    from PIL import Image
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (32, 32), (c * 20, 0, 0)).save(root / split / f"c{c}" / "0.png")
    return root


def check_studies(tmp: Path) -> dict:
    """Both study reports from their committed runs (``--report-only``: nothing retrained),
    which were trained on CIFAR-10 as an image folder (``--dataset imagefolder``)."""
    diffs, cmds = [], []
    data = ["--dataset", "imagefolder", "--data-dir", str(stand_in_folder(tmp / "c10"))]
    for folder, extra in (("shiftvit", ["--device", "cuda", *data]), ("shiftvit-cpu", ["--profile", "cpu", *data])):
        src, dst = RESULTS / "studies" / folder, tmp / folder
        dst.mkdir(parents=True)
        for f in ("runs.parquet", "runs.csv"):
            shutil.copy(src / f, dst / f)
        cmd = ["archbench", "study", "shiftvit", *extra, "--report-only", "--init", "archbench-0.1", "--out", str(dst)]
        sh(cmd)
        cmds.append(cmd)
        for table in sorted(src.glob("*_arms.csv")):
            old, new = pd.read_csv(table), pd.read_csv(dst / table.name)
            key = [c for c in ("section", "arm") if c in old]
            d = differences(new, old, key, [c for c in old.columns if c not in key])
            diffs += [f"{folder}/{table.name}: {x}" for x in d]
        # the report, less the line that times this invocation and the data line naming the folder given
        keep = lambda p: [ln for ln in p.read_text().splitlines()  # noqa: E731
                          if "this invocation" not in ln and not ln.startswith("- Data: imagefolder from")]
        old_md, new_md = keep(src / "report.md"), keep(dst / "report.md")
        if old_md != new_md:
            n = sum(a != b for a, b in zip(old_md, new_md)) + abs(len(old_md) - len(new_md))
            diffs.append(f"{folder}/report.md: {n} lines differ")
    return {"cmd": cmds, "cols": ["every column of each *_arms.csv",
                                  "report.md but its timing line and the data line naming the folder given"],
            "diff": diffs}


def check_search(tmp: Path) -> dict:
    db = tmp / "hybrid.db"
    shutil.copy(RESULTS / "search/hybrid.db", db)
    cmd = ["archbench", "results", "hybrid", "--storage", f"sqlite:///{db}", "--results-dir", str(tmp)]
    sh(cmd)
    old, new = pd.read_csv(RESULTS / "search/hybrid.csv"), pd.read_csv(tmp / "hybrid.csv")
    cols = [c for c in old.columns if c not in ("trial",)]
    return {"cmd": cmd, "cols": ["every committed column"], "diff": differences(new, old, ["trial"], cols),
            "new_cols": sorted(set(new.columns) - set(old.columns))}


def check_early_stopping(tmp: Path) -> dict:
    trials = RESULTS / "search/early_stopping_trials.csv"
    cmd = [sys.executable, "benchmarks/early_stopping.py", "--from-trials", str(trials), "--out",
           str(tmp / "early_stopping")]
    sh(cmd)
    old, new = pd.read_csv(RESULTS / "search/early_stopping.csv"), pd.read_csv(tmp / "early_stopping.csv")
    key = ["seed", "pruner"]
    cols = [c for c in old if c not in key]  # minutes too: read from the trials' recorded start and end times
    return {"cmd": cmd, "cols": cols, "diff": differences(new, old, key, cols)}


CHECKS = {"zoo": check_zoo, "main": check_main, "studies": check_studies, "search": check_search,
          "early_stopping": check_early_stopping}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", default=",".join(CHECKS), help=f"comma list of {', '.join(CHECKS)}")
    ap.add_argument("--out", default=str(RESULTS / "regenerate.md"))
    args = ap.parse_args()
    names = args.checks.split(",")
    bad = [n for n in names if n not in CHECKS]
    if bad:
        ap.error(f"--checks: unknown {', '.join(bad)}; allowed: {', '.join(CHECKS)}")
    lines = ["# Committed results, regenerated", "",
             f"Command: `python benchmarks/regenerate.py --checks {args.checks}`  ",
             "Machine: {host}, {cores} cores, torch {torch}, timm {timm}, fvcore {fvcore}, ptflops {ptflops}, "
             "commit {git_commit}, {timestamp}  ".format(cores=os.cpu_count(), **provenance()),
             "Each result re-made in a scratch folder by its own command and compared value for value with the "
             "committed file, on the columns that do not depend on speed or the clock.", ""]
    for name in names:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            res = CHECKS[name](Path(d))
        cmds = res["cmd"] if isinstance(res["cmd"][0], list) else [res["cmd"]]
        verdict = "**identical**" if not res["diff"] else "**differs**"
        lines += [f"## {name}: {verdict} ({time.time() - t0:.0f} s)", ""]
        shown = lambda c: " ".join(c).replace(d, "<tmp>").replace(sys.executable, "python").replace(f"{ROOT}/", "")  # noqa: E731
        lines += [f"    {shown(c)}" for c in cmds] + [""]
        lines += [f"Compared: {', '.join(res['cols'])}.", ""]
        lines += [f"- {x}" for x in res["diff"]]
        if res.get("new_cols"):
            lines += [f"- columns added since it was committed (not compared): {', '.join(res['new_cols'])}"]
        lines += [""]
        print(f"{name}: {'identical' if not res['diff'] else res['diff']}", flush=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
