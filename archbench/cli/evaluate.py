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
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    from archbench.models import create_model
    from archbench.train.folder import BadImages, FileImages, collate_skip_bad, scan_split

    if not args.model:
        raise UsageError("eval needs --model NAME (a zoo model) and --pretrained PATH")
    root = Path(args.data_dir)
    if not root.is_dir():
        raise UsageError(f"data dir {args.data_dir!r} does not exist")
    overrides = {k: getattr(args, k) for k in ("img_size", "patch_size", "num_classes") if getattr(args, k) is not None}
    model = create_model(args.model, pretrained=args.pretrained, **overrides).eval()
    cfg = model.pretrained_cfg
    tf = create_transform(input_size=cfg["input_size"], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"],
                          mean=cfg["mean"], std=cfg["std"])
    files, classes = scan_split(root)  # <class>/<image>, classes sorted as torchvision's ImageFolder
    if len(classes) > model.num_classes:
        raise UsageError(f"{args.data_dir!r} has {len(classes)} classes but the model predicts {model.num_classes}")
    # an image that cannot be decoded is named and skipped (more than 10 stop with one line), as in training
    mode = "L" if cfg["input_size"][0] == 1 else "RGB"
    loader = DataLoader(FileImages(files, tf, mode), batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate_skip_bad)
    bad = BadImages()
    device = torch.device(args.device)
    model.to(device)
    c1 = c5 = n = 0
    with Progress(transient=True, disable=args.json) as bar, torch.inference_mode():
        task = bar.add_task(f"evaluating {args.model}", total=len(loader))
        for x, y, bad_paths in loader:
            bad.add(bad_paths)
            bar.advance(task)
            if not len(y):
                continue
            top = model(x.to(device)).topk(min(5, model.num_classes), dim=1).indices.cpu()
            c1 += (top[:, 0] == y).sum().item()
            c5 += (top == y[:, None]).any(dim=1).sum().item()
            n += len(y)
    if not n:
        raise UsageError(f"none of the {len(files)} images under {args.data_dir!r} could be read")
    row = {"model": args.model, "pretrained": args.pretrained, "images": n, "top1": 100 * c1 / n,
           "top5": 100 * c5 / n, "input_size": list(cfg["input_size"]), "crop_pct": cfg["crop_pct"],
           "interpolation": cfg["interpolation"], "skipped_images": bad.summary()}
    if args.json:
        print(json.dumps(row))
    else:
        _console().print(f"{args.model}: top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%  on {n} images "
                         f"({cfg['input_size'][1]}px, crop {cfg['crop_pct']}, {cfg['interpolation']})"
                         + (f"; {row['skipped_images']}" if row["skipped_images"] else ""), highlight=False)
    return 0
