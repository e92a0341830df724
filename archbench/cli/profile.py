"""``archbench profile``: parameters, FLOPs from two counters, throughput, latency, memory."""
from __future__ import annotations

import json

from archbench.cli.args import _count, _device, add_model_args, model_from_args
from archbench.cli.console import _console, _fmt
from archbench.errors import UsageError
from archbench.results import check_table, table_path, table_stem

TABLE = "profile"  # the table's name inside a folder given as --out


def add_parser(sub, default_device: str) -> None:
    pr = sub.add_parser("profile", help="parameters, FLOPs (fvcore + ptflops), throughput, latency, memory")
    add_model_args(pr)
    pr.add_argument("--all", action="store_true", help="profile every zoo model (filter with --pattern)")
    pr.add_argument("--pattern", default="*", help="with --all: shell-style filter, e.g. 'deit_*'")
    pr.add_argument("--no-speed", action="store_true", help="skip timing: sizes and FLOPs only")
    pr.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    pr.add_argument("--batch-size", type=int, default=8, help="inference batch (latency is always batch 1)")
    pr.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:1, ...")
    pr.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype")
    pr.add_argument("--channels-last", action="store_true")
    pr.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"])
    pr.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    pr.add_argument("--repeats", type=_count(1), default=10, help="timed iterations (after warm-up)")
    pr.add_argument("--out", default=f"results/{TABLE}",
                    help=f"results table: a stem that gets .parquet and .csv (dots kept), or an existing folder (or "
                         f"a path ending in /) to write {TABLE}.parquet and {TABLE}.csv inside; '' to keep none "
                         f"(default: results/{TABLE})")
    pr.add_argument("--json", action="store_true", help="print the row as one JSON object (last stdout line)")
    pr.set_defaults(func=cmd_profile)


def cmd_profile(args) -> int:
    from rich.progress import Progress
    from rich.table import Table

    from archbench.measure.profile import profile_model
    from archbench.results import save_rows

    out = table_stem(args.out, TABLE) if args.out else None
    if out is not None:  # before anything is measured
        check_table(out, "--out")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.all:
        from archbench.models import create_model, list_models
        names = list_models(args.pattern)
        if not names:
            raise UsageError(f"no zoo model matches {args.pattern!r}")
        todo = [(n, lambda n=n: create_model(n)) for n in names]
    else:
        holds = "build" if args.no_speed or args.no_train else "forward-backward"
        model, name = model_from_args(args, holds=holds, device=args.device)
        todo = [(name, lambda: model)]
    kw = dict(speed=not args.no_speed, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
              channels_last=args.channels_last, compile=args.compile, threads=args.threads,
              repeats=args.repeats, train=not args.no_train)
    rows = []
    with Progress(transient=True, disable=args.json or len(todo) == 1) as bar:
        task = bar.add_task("profiling", total=len(todo))
        for name, make in todo:
            bar.update(task, description=f"profiling {name}")
            rows.append(profile_model(make(), name=name, **kw))
            bar.advance(task)
            if out is not None:  # each row is saved as soon as it is measured (or kept in a JSON file)
                save_rows(out, rows[-1:])
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, default=str))
        return 0
    setting = "sizes and FLOPs only" if args.no_speed else f"{args.dtype}, batch {args.batch_size}"
    t = Table(title=f"archbench profile — {rows[0]['device']}, {setting}",
              caption=f"GMACs: multiply-adds per image, attention counted; MB: peak memory of inference at the batch "
              f"and of the training steps (CUDA: allocated; CPU: resident-set growth). Rows appended to "
              f"{table_path(out)}/.csv"
              if out is not None else None)
    cols = [("name", "name"), ("params", "params (M)"), ("gmacs_fvcore", "GMACs fvcore"),
            ("gmacs_ptflops", "GMACs ptflops"), ("gmacs_token_mixer", "mixer GMACs"), ("gmacs_ffn", "FFN GMACs"),
            ("throughput", "img/s"), ("latency_ms", "latency ms"), ("train_throughput", "train img/s"),
            ("peak_mem_mb", "infer MB"), ("train_peak_mem_mb", "train MB")]
    for _, label in cols:
        t.add_column(label, justify="left" if label == "name" else "right")
    for r in rows:
        t.add_row(*[_fmt(r.get(k) / 1e6 if k == "params" else r.get(k),
                         1 if k in ("throughput", "train_throughput", "latency_ms", "peak_mem_mb", "train_peak_mem_mb")
                         else 3) for k, _ in cols])
        for backend in ("fvcore", "ptflops"):
            if r.get(f"{backend}_error"):
                t.caption = (t.caption or "") + f"\n{r['name']}: {backend} failed: {r[backend + '_error']}"
    _console().print(t)
    return 0
