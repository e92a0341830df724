"""Top-1/top-5 of a model: the counting shared by training's evaluation and ``archbench eval``,
and the evaluation of a model on an image folder (``<class>/<image>``) with its own transforms."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from archbench.errors import UsageError


def count_correct(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """How many of the batch are right at top-1 and at top-5 (top-k, k = min(5, classes))."""
    top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
    y = y.to(top.device)
    return int((top[:, 0] == y).sum()), int((top == y[:, None]).any(dim=1).sum())


def evaluate_folder(model: nn.Module, root: str | Path, *, batch_size: int, workers: int, device: torch.device,
                    on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Top-1/top-5 (%) of ``model`` on the images under ``root``, read with the transforms of its
    ``pretrained_cfg`` (as timm evaluates). Unreadable images are named and skipped (more than 10
    stop with one line). ``on_batch(done, total)`` after each batch, for a progress bar."""
    from timm.data import create_transform
    from torch.utils.data import DataLoader

    from archbench.train.folder import BadImages, FileImages, collate_skip_bad, scan_split

    cfg = model.pretrained_cfg
    tf = create_transform(input_size=cfg["input_size"], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"],
                          mean=cfg["mean"], std=cfg["std"])
    files, classes = scan_split(Path(root))  # <class>/<image>, classes sorted as torchvision's ImageFolder
    if len(classes) > model.num_classes:
        raise UsageError(f"{str(root)!r} has {len(classes)} classes but the model predicts {model.num_classes}")
    mode = "L" if cfg["input_size"][0] == 1 else "RGB"
    loader = DataLoader(FileImages(files, tf, mode), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_skip_bad)
    bad = BadImages()
    model.to(device).eval()
    c1 = c5 = n = 0
    with torch.inference_mode():
        for i, (x, y, bad_paths) in enumerate(loader):
            bad.add(bad_paths)
            if len(y):
                a, b = count_correct(model(x.to(device)), y)
                c1, c5, n = c1 + a, c5 + b, n + len(y)
            if on_batch:
                on_batch(i + 1, len(loader))
    if not n:
        raise UsageError(f"none of the {len(files)} images under {str(root)!r} could be read")
    return {"images": n, "top1": 100 * c1 / n, "top5": 100 * c5 / n, "input_size": list(cfg["input_size"]),
            "crop_pct": cfg["crop_pct"], "interpolation": cfg["interpolation"], "skipped_images": bad.summary()}
