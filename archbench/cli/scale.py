"""``archbench scale``: cost across resolutions — tokens, params, GMACs, speed and memory of one
model, or of every token mixer at a matched base, at several image sizes, with log-log slopes."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from archbench.cli.args import _device, add_model_args, shorthand_from_args, spec_from_args
from archbench.cli.console import _console, _fmt
from archbench.errors import UsageError
from archbench.results import check_writable


def add_parser(sub, default_device: str) -> None:
    from archbench.measure.scale import DEFAULT_BASE, DEFAULT_SIZES

    base = ", ".join(f"{k} {v}" for k, v in DEFAULT_BASE.items())
    p = sub.add_parser("scale", help="cost across resolutions: GMACs, latency, training step and memory "
                                     "against tokens, with log-log slopes")
    add_model_args(p)
    p.add_argument("--mixers", help="all, or names like msa,shift: one model per token mixer, built from one "
                                    f"base (default: {base}; the spec flags change it, or --model/--spec)")
    p.add_argument("--img-sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="square input sizes (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="inference and training batch (latency: batch 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (after 2 warm-up calls)")
    p.add_argument("--device", type=_device, default=default_device, help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default="results/benchmarks/scale",
                   help="stem of the .parquet/.csv/.md/.png written (replaced whole)")
    p.add_argument("--json", action="store_true",
                   help="print {rows, slopes, files} as one JSON object (last stdout line)")
    p.set_defaults(func=cmd_scale)


def cmd_scale(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from archbench.builder import make_spec
    from archbench.measure.scale import (DEFAULT_BASE, TABLE_COLS, candidates, describe, measure_grid,
                                         parse_mixers, parse_sizes, records, slopes, write_outputs)

    sizes = parse_sizes(args.img_sizes)
    if args.img_size is not None:
        raise UsageError("scale takes its sizes from --img-sizes (a list), not --img-size")
    mixers = parse_mixers(args.mixers) if args.mixers else None
    if mixers and args.mixer:
        raise UsageError("give --mixers (one model per mixer) or --mixer (one model), not both")
    if mixers and not args.model and args.spec is None:
        base = make_spec(**{**DEFAULT_BASE, **shorthand_from_args(args)})
    else:
        base = spec_from_args(args)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    cands = candidates(base, sizes, mixers=mixers, name=args.model)
    check_writable(Path(args.out).parent, "--out")

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    todo = sum(len(c.specs) for c in cands)
    with Progress(*cols, console=_console(), transient=True, disable=args.json) as bar:
        task = bar.add_task(f"measuring {cands[0].name} at {sizes[0]} px", total=todo)
        order = [(c.name, s) for c in cands for s in c.specs]

        def on_cell(name, size):
            bar.advance(task)
            done = int(bar.tasks[0].completed)
            if done < len(order):
                bar.update(task, description=f"measuring {order[done][0]} at {order[done][1]} px")

        df = measure_grid(cands, batch_size=args.batch_size, repeats=args.repeats, device=args.device,
                          on_cell=on_cell)
    paths = write_outputs(df, args.out, command=_command(args),
                          notes=[f"Base: {describe(base, mixer=False)}; only the token mixer differs "
                                 "(every row's full spec is in the CSV's `spec` column)." if mixers else
                                 f"Model: {cands[0].name} ({describe(base)}).",
                                 f"Inference and training batch {args.batch_size} (latency batch 1), "
                                 f"{args.repeats} timed calls after 2 warm-up calls, medians; training step: "
                                 "logsumexp of the output, backward, AdamW step; peak memory: "
                                 + ("CUDA max allocated (weights included)" if args.device.startswith("cuda")
                                    else "growth of the process's resident set") + "."])
    sl = slopes(df)
    if args.json:
        print(json.dumps({"rows": records(df), "slopes": records(sl),
                          "files": {k: str(v) for k, v in paths.items()}}, default=str))
        return 0
    console = _console()
    t = Table(title=f"archbench scale — {df.iloc[0]['device']}, fp32, batch {args.batch_size}",
              caption="GMACs: multiply-adds per image (fvcore); latency at batch 1; peak MB of a training step")
    labels = {"name": "name", "img_size": "px", "tokens": "tokens", "params": "params (M)", "gmacs": "GMACs",
              "gmacs_token_mixer": "mixer GMACs", "throughput": "img/s", "latency_ms": "latency ms",
              "train_throughput": "train img/s", "train_ms_per_img": "train ms/img", "infer_peak_mb": "infer MB",
              "train_peak_mb": "train MB", "status": "status"}
    shown = [c for c in TABLE_COLS if c in df]
    for c in shown:
        t.add_column(labels[c], justify="left" if c in ("name", "status") else "right")
    for r in df.to_dict("records"):
        t.add_row(*[_fmt(r[c] / 1e6 if c == "params" and r[c] is not None and r[c] == r[c] else r[c],
                         4 if c.startswith("gmacs") else 1 if c not in ("params",) else 3) for c in shown])
    console.print(t)
    st = Table(title="log-log slope against tokens (cost ∝ tokens^slope)")
    for c in sl.columns:
        st.add_column(c, justify="left" if c == "name" else "right")
    for r in sl.to_dict("records"):
        st.add_row(r["name"], *[_fmt(r[c], 2) for c in sl.columns[1:]])
    console.print(st)
    for r in df[df["status"] != "ok"].to_dict("records"):
        console.print(f"{r['name']} at {r['img_size']} px not measured: {r['error']}", highlight=False)
    console.print(f"written: {', '.join(str(p) for p in paths.values())}", highlight=False)
    return 0


def _command(args) -> str:
    """The command, every setting spelt out (defaults included), for the report's header."""
    from archbench.cli.args import SHORTHAND_FLAGS

    parts = ["archbench", "scale"]
    if args.model:
        parts += ["--model", args.model]
    if args.spec is not None:
        parts += ["--spec", str(args.spec)]
    if args.mixers:
        parts += ["--mixers", args.mixers]
    for k in SHORTHAND_FLAGS:
        v = getattr(args, k)
        if v is not None:
            parts += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    for k in ("set", "mixer_opt", "ffn_opt", "macro_opt"):
        for item in getattr(args, k) or []:
            parts += [f"--{k.replace('_', '-')}", item]
    parts += ["--img-sizes", args.img_sizes, "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
              "--device", str(args.device), "--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)
