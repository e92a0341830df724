"""``archbench search``, ``results`` and ``plot``: Optuna studies over a search space."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from archbench.cli.args import _device
from archbench.cli.console import _console, _fmt
from archbench.errors import UsageError
from archbench.results import check_writable


def _duration(text: str) -> float:
    import argparse
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m or float(m[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration (e.g. 30m, 2h, 90s, 45)")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]


def add_parser(sub, default_device: str) -> None:
    se = sub.add_parser("search", help="an Optuna study over a search space (resumable)")
    se.add_argument("space", type=Path, help="search-space YAML (see search_spaces/README.md)")
    se.add_argument("--trials", type=int, default=20,
                    help="distinct configurations the study should finish (trained, pruned or refused as over "
                         "budget/invalid); a draw of one it already has reuses that result and does not count")
    se.add_argument("--checkpoint-dir", help="each configuration's run keeps its checkpoint here (one folder "
                                             "per configuration): a trial killed mid-run and retried resumes")
    se.add_argument("--storage", help="Optuna storage URL (default: sqlite under results/search/)")
    se.add_argument("--study", help="study name (default: the space's name)")
    se.add_argument("--workers", type=int, default=1, help="processes sharing the storage")
    se.add_argument("--time-budget", "--timeout", dest="timeout", type=_duration, metavar="DURATION",
                    help="start no trial after this (e.g. 30m, 2h, 90s, or seconds); running trials finish")
    se.add_argument("--device", type=_device, default=default_device)
    se.add_argument("--results-dir", default="results/search")
    se.add_argument("--json", action="store_true")
    se.set_defaults(func=cmd_search)

    for cmd, fn, hlp in (("results", cmd_results, "a study's trials as a table (parquet + CSV)"),
                         ("plot", cmd_plot, "Pareto plot of a study (PNG + SVG)")):
        q = sub.add_parser(cmd, help=hlp)
        q.add_argument("study")
        q.add_argument("--storage")
        q.add_argument("--results-dir", default="results/search")
        if cmd == "plot":
            q.add_argument("--x", default="gmacs", help="gmacs | params | throughput | latency | top1 | top5")
            q.add_argument("--y", default="top1")
            q.add_argument("--overlay", help="a results table (e.g. results/runs) to draw as grey crosses")
            q.add_argument("--out", help="output stem (default: results/search/STUDY_Y_vs_X)")
        q.add_argument("--json", action="store_true")
        q.set_defaults(func=fn)


def cmd_search(args) -> int:
    import dataclasses

    from rich.progress import Progress

    from archbench.search.report import trials_table
    from archbench.search.run import run_search
    from archbench.search.space import load_space
    from archbench.search.study import check_satisfiable, default_storage, open_study, resolve_space

    space = load_space(args.space)
    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    check_writable(Path(args.results_dir), "--results-dir")
    if args.checkpoint_dir:
        check_writable(Path(args.checkpoint_dir), "--checkpoint-dir")
    resolved = resolve_space(space)
    check_satisfiable(*resolved)
    storage = args.storage or default_storage(space, args.results_dir)
    name = args.study or space.name
    study = open_study(space, storage, name)  # fails cleanly on a bad URL, before any worker starts
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task(f"study {name}", total=args.trials)
        outcome = run_search(args.space, trials=args.trials, storage=storage, study_name=name, workers=args.workers,
                             device=args.device, timeout=args.timeout, checkpoints=args.checkpoint_dir,
                             on_progress=lambda n: bar.update(task, completed=min(n, args.trials)),
                             resolved=resolved)
    df = trials_table(study)
    out = _write_table(df, args.results_dir, name)
    summary = {**dataclasses.asdict(outcome), "table": f"{out}.parquet"}
    if args.json:
        print(json.dumps(summary))
    else:
        _print_trials(df, name)
        _console().print(f"table: {out}.parquet / .csv   storage: {storage}")
    for note in outcome.notes:
        print(f"archbench search: {note}", file=sys.stderr)
    if outcome.worker_exit_codes:
        print(f"archbench search: error: worker(s) exited with {outcome.worker_exit_codes}; see above", file=sys.stderr)
        return 1
    if outcome.complete == 0:
        print(f"archbench search: error: no trial of study {name!r} completed ({outcome.pruned} pruned, "
              f"{outcome.failed} failed); the reasons are in the table's `reason` column", file=sys.stderr)
        return 1
    return 0


def _print_trials(df, name: str) -> None:
    from rich.table import Table

    t = Table(title=f"study {name}: {len(df)} trials (★ = Pareto, top-1 vs GMACs)")
    # the space's other sampled parameters, so that two trials of one mixer and FFN can be told apart
    sampled = [c for c in df.columns if c.startswith("param_") and c not in ("param_mixer", "param_ffn")]
    cols = ("trial", "state", "mixer", "ffn") + (("sampled",) if sampled else ()) + (
        "params (M)", "GMACs", "top-1", "img/s", "note")
    for col in cols:
        t.add_column(col, justify="right" if col in ("trial", "params (M)", "GMACs", "top-1", "img/s") else "left")
    missing = lambda v: v is None or v != v  # noqa: E731 - None or NaN: nothing recorded
    text = lambda v, empty="—": empty if missing(v) else str(v)  # noqa: E731
    for _, r in df.iterrows():
        row = [("★ " if r.get("pareto") else "") + str(r["trial"]), r["state"], text(r["mixer"]), text(r["ffn"])]
        if sampled:
            row.append(" ".join(f"{c.removeprefix('param_')}={_value(r[c])}" for c in sampled if not missing(r[c])))
        t.add_row(*row, _fmt(None if missing(r["params"]) else r["params"] / 1e6, 3), _fmt(r["gmacs"], 4),
                  _fmt(r["top1"], 2), _fmt(r["throughput"], 0), text(r["reason"], ""))
    _console().print(t)


def _value(v) -> str:
    """A sampled value as a person writes it: 2.0 → 2, 0.0833333 → 0.08333."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _load_study(args):
    import optuna

    from archbench.search.study import _storage

    storage = args.storage or f"sqlite:///{Path(args.results_dir) / (args.study + '.db')}"
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        raise UsageError(f"no study storage at {storage.removeprefix('sqlite:///')!r}; run `archbench search` first")
    try:
        return optuna.load_study(study_name=args.study, storage=_storage(storage))
    except KeyError:
        raise UsageError(f"no study named {args.study!r} in {storage}") from None


def cmd_results(args) -> int:
    from archbench.search.report import trials_table

    df = trials_table(_load_study(args))
    check_writable(Path(args.results_dir), "--results-dir")
    _write_table(df, args.results_dir, args.study)
    if args.json:
        print(df.drop(columns=["spec", "history"]).to_json(orient="records", date_format="iso"))
    else:
        _print_trials(df, args.study)
    return 0


def _write_table(df, results_dir: str, name: str) -> Path:
    """A study's trials as ``RESULTS_DIR/NAME.parquet`` and ``.csv`` (the name keeps its dots); returns the stem."""
    from archbench.results import _replace, table_path

    out = Path(results_dir) / name
    _replace(df, table_path(out, ".parquet"))
    _replace(df, table_path(out, ".csv"))
    return out


def _plot_stem(path: str | Path) -> Path:
    """The plot's stem: a trailing .png or .svg is dropped, any other dot kept (``front.v2``)."""
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in (".png", ".svg") else path


def _overlay(arg: str):
    import pandas as pd

    from archbench.results import table_path, table_stem

    stem = table_stem(arg)  # a .parquet or .csv file, or its stem
    for suffix, read in ((".parquet", pd.read_parquet), (".csv", pd.read_csv)):
        candidate = table_path(stem, suffix)
        if candidate.is_file():
            df = read(candidate)
            if "gmacs" not in df and "gmacs_fvcore" in df:
                df = df.assign(gmacs=df["gmacs_fvcore"])
            return df
    raise UsageError(f"--overlay {arg!r}: no such table (give a .parquet or .csv file, or its stem)")


def cmd_plot(args) -> int:
    from archbench.search.report import plot_pareto, trials_table

    overlay = _overlay(args.overlay) if args.overlay else None  # checked before the study is read
    out = _plot_stem(args.out or Path(args.results_dir) / f"{args.study}_{args.y}_vs_{args.x}")
    check_writable(out.parent, "--out")
    df = trials_table(_load_study(args))
    data = plot_pareto(df, args.x, args.y, out, title=f"study {args.study}: {args.y} vs {args.x}", overlay=overlay)
    if args.json:
        print(json.dumps({"png": data["png"], "svg": data["svg"], "points": len(data["x"]), "front": data["front"]}))
    else:
        front = ", ".join(str(t) for t in data["front"]) or "none"
        print(f"wrote {data['png']} and {data['svg']}: {len(data['x'])} trained trials, Pareto front: trial(s) {front}")
    return 0
