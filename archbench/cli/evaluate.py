"""``archbench eval``: a published checkpoint on an image folder, with the model's own preprocessing."""
from __future__ import annotations

import json
from pathlib import Path

from archbench.cli.args import _device, add_model_args
from archbench.cli.console import _console
from archbench.errors import UsageError


def add_parser(sub, default_device: str) -> None:
    e = sub.add_parser("eval", help="evaluate a published checkpoint with the model's own preprocessing")
    add_model_args(e)
    e.add_argument("--pretrained", required=True, help="checkpoint path (timm's keys or ours)")
    e.add_argument("--dataset", default="imagefolder", choices=["imagefolder"])
    e.add_argument("--data-dir", required=True, help="validation folder: <class>/<image>")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--device", type=_device, default=default_device)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    import torch
    from rich.progress import Progress
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    from archbench.models import create_model

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
    try:
        ds = ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise UsageError(f"{args.data_dir!r} is not an image folder (<class>/<image>): {e}") from None
    if len(ds.classes) > model.num_classes:
        raise UsageError(f"{args.data_dir!r} has {len(ds.classes)} classes but the model predicts {model.num_classes}")
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)
    device = torch.device(args.device)
    model.to(device)
    c1 = c5 = n = 0
    with Progress(transient=True, disable=args.json) as bar, torch.inference_mode():
        task = bar.add_task(f"evaluating {args.model}", total=len(loader))
        for x, y in loader:
            top = model(x.to(device)).topk(min(5, model.num_classes), dim=1).indices.cpu()
            c1 += (top[:, 0] == y).sum().item()
            c5 += (top == y[:, None]).any(dim=1).sum().item()
            n += len(y)
            bar.advance(task)
    row = {"model": args.model, "pretrained": args.pretrained, "images": n, "top1": 100 * c1 / n,
           "top5": 100 * c5 / n, "input_size": list(cfg["input_size"]), "crop_pct": cfg["crop_pct"],
           "interpolation": cfg["interpolation"]}
    if args.json:
        print(json.dumps(row))
    else:
        _console().print(f"{args.model}: top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%  on {n} images "
                         f"({cfg['input_size'][1]}px, crop {cfg['crop_pct']}, {cfg['interpolation']})")
    return 0
