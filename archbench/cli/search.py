"""``archbench search``, ``results`` and ``plot``: Optuna studies over a search space."""
from __future__ import annotations

import json
from pathlib import Path

from archbench.cli.args import _device
from archbench.cli.console import _console, _fmt
from archbench.errors import UsageError
from archbench.results import check_writable


def add_parser(sub, default_device: str) -> None:
    se = sub.add_parser("search", help="an Optuna study over a search space (resumable)")
    se.add_argument("space", type=Path, help="search-space YAML (see search_spaces/README.md)")
    se.add_argument("--trials", type=int, default=20, help="finished trials the study should have")
    se.add_argument("--checkpoint-dir", help="each configuration's run keeps its checkpoint here (one folder "
                                             "per configuration): a trial killed mid-run and retried resumes")
    se.add_argument("--storage", help="Optuna storage URL (default: sqlite under results/search/)")
    se.add_argument("--study", help="study name (default: the space's name)")
    se.add_argument("--workers", type=int, default=1, help="processes sharing the storage")
    se.add_argument("--timeout", type=float, help="seconds per worker")
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
        else:
            q.add_argument("--json", action="store_true")
        q.set_defaults(func=fn)


def _search_worker(space_path: str, storage: str, study_name: str, total: int, remaining: int, timeout,
                   device: str, checkpoints: str | None = None) -> None:
    import optuna

    from archbench.search.space import load_space
    from archbench.search.study import TRIAL_FAILURES, make_objective, open_study

    space = load_space(space_path)
    study = open_study(space, storage, study_name)
    # n_trials bounds this worker; the callback stops it once the study as a whole has enough
    study.optimize(make_objective(space, device=device, checkpoints=checkpoints), n_trials=remaining, timeout=timeout, catch=TRIAL_FAILURES,
                   callbacks=[optuna.study.MaxTrialsCallback(
                       total, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))])


def _check_budget(space) -> None:
    from archbench.builder import make_spec
    from archbench.search.study import check_satisfiable
    from archbench.train.data import load_dataset
    from archbench.train.run import DATASET_IMG_SIZE

    ds = space.dataset
    data = load_dataset(ds["name"], ds.get("data_dir"), ds.get("download", False))
    base = {"img_size": DATASET_IMG_SIZE.get(ds["name"], data.native_size), "in_chans": data.in_chans,
            "num_classes": data.num_classes, **space.base}
    space = type(space)(**{**space.__dict__, "base": base})
    check_satisfiable(space, make_spec(**base))


def cmd_search(args) -> int:
    import multiprocessing as mp

    import optuna
    from rich.progress import Progress

    from archbench.search.report import trials_table
    from archbench.search.space import load_space
    from archbench.search.study import default_storage, open_study

    space = load_space(args.space)
    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    _check_budget(space)
    if args.checkpoint_dir:
        check_writable(Path(args.checkpoint_dir), "--checkpoint-dir")
    storage = args.storage or default_storage(space, args.results_dir)
    name = args.study or space.name
    study = open_study(space, storage, name)  # fails cleanly on a bad URL, before any worker starts
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = args.trials - len(study.get_trials(deepcopy=False, states=done_states))
    import torch
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    # one worker per GPU when there are several: worker i trains on cuda:i (mod the count)
    devices = [f"cuda:{i % gpus}" if gpus > 1 else args.device for i in range(args.workers)]
    procs = [mp.get_context("spawn").Process(
        target=_search_worker, args=(str(args.space), storage, name, args.trials, remaining, args.timeout, dev,
                                  args.checkpoint_dir))
        for dev in (devices if remaining > 0 else [])]
    for p in procs:
        p.start()
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task(f"study {name}", total=args.trials)
        while any(p.is_alive() for p in procs):
            bar.update(task, completed=min(args.trials, len(study.get_trials(deepcopy=False, states=done_states))))
            for p in procs:
                p.join(timeout=1.0 / len(procs))
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    df = trials_table(study)
    out = Path(args.results_dir) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    from archbench.results import _replace
    _replace(df, out.with_suffix(".parquet"))
    _replace(df, out.with_suffix(".csv"))
    summary = {"study": name, "storage": storage, "trials": len(df),
               "complete": int((df["state"] == "COMPLETE").sum()) if len(df) else 0,
               "pruned": int((df["state"] == "PRUNED").sum()) if len(df) else 0,
               "failed": int((df["state"] == "FAIL").sum()) if len(df) else 0,
               "table": str(out.with_suffix(".parquet")), "worker_exit_codes": bad}
    if args.json:
        print(json.dumps(summary))
    else:
        _print_trials(df, name)
        _console().print(f"table: {out}.parquet / .csv   storage: {storage}")
    return 0 if not bad else 1


def _print_trials(df, name: str) -> None:
    from rich.table import Table

    t = Table(title=f"study {name}: {len(df)} trials (★ = Pareto, top-1 vs GMACs)")
    for col in ("trial", "state", "mixer", "ffn", "params (M)", "GMACs", "top-1", "img/s", "note"):
        t.add_column(col, justify="right" if col in ("trial", "params (M)", "GMACs", "top-1", "img/s") else "left")
    for _, r in df.iterrows():
        t.add_row(("★ " if r.get("pareto") else "") + str(r["trial"]), r["state"], str(r["mixer"] or "—"),
                  str(r["ffn"] or "—"), _fmt(None if r["params"] is None else r["params"] / 1e6, 3),
                  _fmt(r["gmacs"], 4), _fmt(r["top1"], 2), _fmt(r["throughput"], 0), str(r["reason"] or ""))
    _console().print(t)


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
    out = Path(args.results_dir) / args.study
    from archbench.results import _replace
    _replace(df, out.with_suffix(".parquet"))
    _replace(df, out.with_suffix(".csv"))
    if args.json:
        print(df.drop(columns=["spec", "history"]).to_json(orient="records", date_format="iso"))
    else:
        _print_trials(df, args.study)
    return 0


def cmd_plot(args) -> int:
    from archbench.search.report import plot_pareto, trials_table

    df = trials_table(_load_study(args))
    overlay = None
    if args.overlay:
        from archbench.results import read_table
        overlay = read_table(Path(args.overlay).with_suffix(""))
        if "gmacs" not in overlay and "gmacs_fvcore" in overlay:
            overlay = overlay.assign(gmacs=overlay["gmacs_fvcore"])
    out = Path(args.out or Path(args.results_dir) / f"{args.study}_{args.y}_vs_{args.x}")
    data = plot_pareto(df, args.x, args.y, out, title=f"study {args.study}: {args.y} vs {args.x}", overlay=overlay)
    print(json.dumps({"png": str(out.with_suffix(".png")), "svg": str(out.with_suffix(".svg")),
                      "points": len(data["x"]), "front": data["front"]}))
    return 0
