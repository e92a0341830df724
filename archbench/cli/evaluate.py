"""``archbench eval``: a published checkpoint on an image folder, with the model's own preprocessing."""
from __future__ import annotations

import json
from pathlib import Path

from archbench.cli.args import _count, _device, add_model_args
from archbench.cli.console import _console
from archbench.errors import UsageError


def add_parser(sub, default_device: str) -> None:
    e = sub.add_parser("eval", help="evaluate a published checkpoint with the model's own preprocessing")
    add_model_args(e)
    e.add_argument("--pretrained", required=True, help="checkpoint path (timm's keys or ours)")
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
    from archbench.train.evaluate import evaluate_folder

    if not args.model:
        raise UsageError("eval needs --model NAME (a zoo model) and --pretrained PATH")
    root = Path(args.data_dir)
    if not root.is_dir():
        raise UsageError(f"data dir {args.data_dir!r} does not exist")
    overrides = {k: getattr(args, k) for k in ("img_size", "patch_size", "num_classes") if getattr(args, k) is not None}
    model = create_model(args.model, pretrained=args.pretrained, **overrides).eval()
    with Progress(transient=True, disable=args.json) as bar:
        task = bar.add_task(f"evaluating {args.model}", total=None)
        result = evaluate_folder(model, root, batch_size=args.batch_size, workers=args.workers,
                                 device=torch.device(args.device),
                                 on_batch=lambda done, total: bar.update(task, completed=done, total=total))
    row = {"model": args.model, "pretrained": args.pretrained, **result}
    cfg = model.pretrained_cfg
    if args.json:
        print(json.dumps(row))
    else:
        _console().print(f"{args.model}: top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%  on {row['images']} images "
                         f"({cfg['input_size'][1]}px, crop {cfg['crop_pct']}, {cfg['interpolation']})"
                         + (f"; {row['skipped_images']}" if row["skipped_images"] else ""), highlight=False)
    return 0
