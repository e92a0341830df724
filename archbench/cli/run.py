"""``archbench run``: train one model on a dataset and record the row."""
from __future__ import annotations

import contextlib
import json
import sys

from archbench.cli.args import (_count, _device, add_model_args, add_train_args, checkpoint_every_from_args,
                                data_into_args, inputs_from_args, recipe_from_args, spec_from_args)
from archbench.cli.console import _console, _fmt, print_key_values, training_progress
from archbench.errors import UsageError
from archbench.results import check_table, check_writable, table_path, table_stem

TABLE = "runs"  # the table's name inside a folder given as --out


def add_parser(sub, default_device: str) -> None:
    r = sub.add_parser("run", help="train a model on a dataset and record its accuracy, size and speed")
    add_model_args(r)
    add_train_args(r)
    r.add_argument("--pretrained", metavar="PATH",
                   help="fine-tune: start from these weights (a zoo model's checkpoint in its reference keys, "
                        "e.g. timm's; or a run's --checkpoint-dir); a classifier of another size starts anew")
    r.add_argument("--compile", action="store_true",
                   help="train through torch.compile (inductor): it compiles first (about a minute for a tiny "
                        "model on a 2-core CPU); evaluation stays eager. Its speed-up is not measured here")
    r.add_argument("--seed", type=_count(0), default=0)
    r.add_argument("--device", type=_device, default=default_device)
    r.add_argument("--out", default=f"results/{TABLE}",
                   help=f"results table: a stem that gets .parquet and .csv (dots kept: exp/run.v2 → "
                        f"exp/run.v2.parquet), or an existing folder (or a path ending in /) to write {TABLE}.parquet "
                        f"and {TABLE}.csv inside; '' to keep none (default: results/{TABLE})")
    r.add_argument("--json", action="store_true", help="print the row as one JSON object (last stdout line)")
    r.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from archbench.measure.memory import check_fits
    from archbench.results import save_rows
    from archbench.train import dist
    from archbench.train.batches import per_rank
    from archbench.train.run import run_experiment
    from archbench.train.stop import Stopped, stop_signals

    ctx = dist.from_env()  # torchrun's ranks, or a world of one
    out = table_stem(args.out, TABLE) if args.out else None
    if ctx.main:  # before anything is loaded or trained
        if out is not None:
            check_table(out, "--out")
        if args.checkpoint_dir:
            check_writable(args.checkpoint_dir, "--checkpoint-dir")
        if args.pretrained:
            from archbench.models.weights import checkpoint_file
            checkpoint_file(args.pretrained)  # a missing file is one line now, not after the data is read
    recipe = recipe_from_args(args)
    inputs = inputs_from_args(args)
    every = checkpoint_every_from_args(args)
    per_rank(recipe.batch_size, ctx)  # a bad launch fails here, before any process group is joined
    data = data_into_args(args)
    spec = spec_from_args(args)
    if spec.in_chans != data.in_chans:
        raise UsageError(f"the model takes {spec.in_chans} input channels but {data.name} images have "
                         f"{data.in_chans}; set --in-chans {data.in_chans}")
    if spec.num_classes != data.num_classes:
        raise UsageError(f"the model has {spec.num_classes} classes but {data.name} has {data.num_classes}")
    for flag in ("limit_train", "limit_test"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    device = ctx.device(args.device)
    check_fits(spec, holds="train", device=device)
    dist.init(ctx, device)
    n_train = data.subset(args.limit_train, args.limit_test).n_train
    steps = max(1, n_train // recipe.batch_size)
    quiet = args.json or not ctx.main
    # with a checkpoint folder, a scheduler's SIGTERM / SIGUSR1 stops the run at a step, saved there
    signals = stop_signals() if args.checkpoint_dir else contextlib.nullcontext(None)
    with signals as stop, training_progress(_console(), recipe.epochs, steps, quiet) as (bar, on_step, on_epoch):
        def say(line):
            if ctx.main:
                bar.console.print(line, style="dim", highlight=False, soft_wrap=True)

        try:
            row = run_experiment(spec, dataset=args.dataset, data_dir=args.data_dir, download=args.download,
                                 recipe=recipe, seed=args.seed, device=device, callback=on_epoch,
                                 on_step=on_step, name=args.model, limit_train=args.limit_train,
                                 limit_test=args.limit_test, inputs=inputs, checkpoint_dir=args.checkpoint_dir,
                                 checkpoint_every=every, pretrained=args.pretrained, compile=args.compile,
                                 ctx=ctx, say=say, stop=stop)
        except Stopped as e:
            if ctx.main:  # neither bad input nor a bug: the scheduler asked, and the state is saved
                print(f"archbench run: {e}; saved in {args.checkpoint_dir}: the same command resumes there",
                      file=sys.stderr, flush=True)
            return e.exit_code
        except RuntimeError as e:
            if not dist.lost_peer(ctx, e):
                raise
            if ctx.main:  # not bad input (exit 1), and no traceback: another process died, not this one
                kept = f"; rerun the same command to resume from {args.checkpoint_dir}" if args.checkpoint_dir else ""
                print(f"archbench run: rank {ctx.rank} lost the other ranks mid-run ({str(e).splitlines()[0][:160]})"
                      f"{kept}", file=sys.stderr, flush=True)
            return 1
        finally:
            dist.shutdown()
    if not ctx.main:
        return 0 if row["status"] == "ok" else 1
    if out is not None:
        save_rows(out, [row])  # a table that cannot be written now keeps the row in a JSON file it names
    if args.json:
        print(json.dumps(row, default=str))
        return 0 if row["status"] == "ok" else 1
    rows = [(label, _fmt(row.get(key), 4 if key == "gmacs_fvcore" else 2)) for key, label in (
        ("status", "status"), ("params", "params"), ("gmacs_fvcore", "GMACs (fvcore)"), ("top1", "top-1 %"),
        ("top5", "top-5 %"), ("throughput", "eval img/s"), ("train_throughput", "train img/s"),
        ("train_seconds", "train seconds"), ("wall_seconds", "wall seconds"))]
    if row["error"]:
        rows.append(("error", row["error"]))
    print_key_values(f"archbench run — {row['name']} on {row['dataset']} ({row['device']})", rows,
                     f"row appended to {table_path(out)} / .csv" if out is not None else None)
    return 0 if row["status"] == "ok" else 1
