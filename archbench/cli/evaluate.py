"""``archbench eval``: a published checkpoint, or a run's, on an image folder, with the model's own preprocessing."""
from __future__ import annotations

import json
from pathlib import Path

from archbench.cli.args import SHORTHAND_FLAGS, _count, _device, add_model_args
from archbench.cli.console import _console
from archbench.errors import UsageError


def add_parser(sub, default_device: str) -> None:
    e = sub.add_parser("eval", help="evaluate a published checkpoint, or a run's, with the model's own preprocessing")
    add_model_args(e)
    e.add_argument("--pretrained", required=True,
                   help="checkpoint path (timm's keys or ours), or a run's --checkpoint-dir (or its last.pt): "
                        "its model is rebuilt from the spec stored there, --model not needed")
    e.add_argument("--ema", action="store_true", help="with a run's checkpoint: evaluate its EMA weights")
    e.add_argument("--dataset", default="imagefolder", choices=["imagefolder"])
    e.add_argument("--data-dir", required=True, help="validation folder: <class>/<image>")
    e.add_argument("--batch-size", type=_count(1), default=64)
    e.add_argument("--workers", type=_count(0), default=2, help="data-loading worker processes (default 2)")
    e.add_argument("--device", type=_device, default=default_device)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    import torch
    from rich.progress import Progress

    from archbench.models import create_model
    from archbench.train.checkpoint import model_from_run, run_checkpoint
    from archbench.train.evaluate import evaluate_folder

    root = Path(args.data_dir)
    if not root.is_dir():
        raise UsageError(f"data dir {args.data_dir!r} does not exist")
    state = run_checkpoint(args.pretrained)
    given = [f"--{k.replace('_', '-')}" for k in ("model", "spec", *SHORTHAND_FLAGS) if getattr(args, k, None)]
    if state is not None:
        if given:
            raise UsageError(f"{args.pretrained!r} is a run's checkpoint, which carries its model: leave out "
                             f"{', '.join(given)}")
        model, name = model_from_run(state, ema=args.ema).eval(), f"run {args.pretrained}"
    elif args.ema:
        raise UsageError(f"--ema reads a run's checkpoint (a --checkpoint-dir or its last.pt); {args.pretrained!r} "
                         "is not one")
    elif not args.model:
        raise UsageError("eval needs --model NAME (a zoo model) with --pretrained PATH, "
                         "or a run's --checkpoint-dir as --pretrained")
    else:
        overrides = {k: getattr(args, k) for k in ("img_size", "patch_size", "num_classes")
                     if getattr(args, k) is not None}
        model, name = create_model(args.model, pretrained=args.pretrained, **overrides).eval(), args.model
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task(f"evaluating {name}", total=None)
        result = evaluate_folder(model, root, batch_size=args.batch_size, workers=args.workers,
                                 device=torch.device(args.device),
                                 on_batch=lambda done, total: bar.update(task, completed=done, total=total))
    row = {"model": args.model or name, "pretrained": args.pretrained, "ema": args.ema, **result}
    cfg = model.pretrained_cfg
    if args.json:
        print(json.dumps(row))
    else:
        _console().print(f"{name}{' (EMA)' if args.ema else ''}: top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%  "
                         f"on {row['images']} images "
                         f"({cfg['input_size'][1]}px, crop {cfg['crop_pct']}, {cfg['interpolation']})"
                         + (f"; {row['skipped_images']}" if row["skipped_images"] else ""), highlight=False)
    return 0
