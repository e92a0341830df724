"""The training loop: AdamW, linear warm-up then cosine decay, label smoothing, gradient
clipping, batched augmentation, autocast on CUDA, seeded and deterministic on CPU.

Every epoch ends with a held-out evaluation (top-1, top-5) and a call to ``callback``;
a callback may raise (e.g. optuna's ``TrialPruned``) to stop the run. A loss that becomes
NaN or infinite stops the run with :class:`Diverged`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from archbench.train.data import Dataset


@dataclass(frozen=True)
class Recipe:
    """How a model is trained; stored with every run."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    clip_grad: float = 1.0  # max global grad norm; 0 disables
    augment: bool = True  # random crop (4-pixel padding at 32 px, scaled) and, where valid, flips
    eval_batch_size: int = 256

    def check(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr",):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "warmup_epochs", "clip_grad"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, top1, top5, ...
    train_seconds: float = 0.0
    train_images: int = 0

    @property
    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


def seed_everything(seed: int) -> torch.Generator:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def augment(x: torch.Tensor, *, flip: bool, gen: torch.Generator | None = None,
            offsets: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
    """Random crop after zero padding (4 px at 32 px, scaled with size) and horizontal flip,
    per image, on a whole float batch. ``offsets`` (dy, dx, flip mask), drawn ahead by
    :func:`draw_offsets`, replace the draws from ``gen``."""
    B, C, H, W = x.shape
    pad = crop_pad(H, W)
    if offsets is None:
        offsets = draw_offsets(B, pad, flip, gen)
    dy, dx, mask = offsets
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(H, device=dy.device)[None]).to(x.device)  # (B, H)
    cols = (dx[:, None] + torch.arange(W, device=dx.device)[None]).to(x.device)  # (B, W)
    out = xp[torch.arange(B, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    out = out.permute(0, 3, 1, 2)  # advanced indexing put channels last: (B, H, W, C) → (B, C, H, W)
    if flip:
        out = torch.where(mask.to(x.device)[:, None, None, None], out.flip(-1), out)
    return out


def crop_pad(h: int, w: int) -> int:
    return max(1, round(4 * min(h, w) / 32))


def draw_offsets(n: int, pad: int, flip: bool, gen: torch.Generator | None):
    """Crop offsets and flip mask for ``n`` images (in the order :func:`augment` draws them)."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    mask = (torch.rand(n, generator=gen) < 0.5) if flip else None
    return dy, dx, mask


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x.float().div_(255) - mean) / std


@torch.inference_mode()
def evaluate(model: nn.Module, data: Dataset, *, device: torch.device, batch_size: int = 256,
             autocast: bool = False) -> dict[str, float]:
    """Top-1/top-5 (%) on the test split, and eval throughput (images/s)."""
    model.eval()
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    correct1 = correct5 = 0
    k = min(5, data.num_classes)
    t0 = time.perf_counter()
    for xb, yb in zip(data.test.x.split(batch_size), data.test.y.split(batch_size)):
        xb, yb = xb.to(device), yb.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(_normalise(xb, mean, std))
        top = logits.float().topk(k, dim=1).indices
        correct1 += (top[:, 0] == yb).sum().item()
        correct5 += (top == yb[:, None]).any(dim=1).sum().item()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    n = len(data.test.y)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "eval_throughput": n / seconds}


def train(model: nn.Module, data: Dataset, recipe: Recipe, *, seed: int = 0, device: str | torch.device = "cpu",
          callback: Callable[[int, dict[str, float]], None] | None = None,
          on_step: Callable[[int, int, float], None] | None = None) -> History:
    """Train ``model`` on ``data`` (already at the model's input size); returns the history.

    ``callback(epoch, metrics)`` runs after each epoch's evaluation; ``on_step(epoch, step,
    loss)`` after each optimiser step (progress bars)."""
    recipe.check()
    device = torch.device(device)
    gen = seed_everything(seed)
    model.to(device)
    use_amp = device.type == "cuda"
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) or "cls_token" in name
             or "pos_embed" in name or "rel_pos" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    n = len(data.train.y)
    steps_per_epoch = max(1, n // recipe.batch_size)  # drop the last partial batch: BN needs > 1 sample
    total = steps_per_epoch * recipe.epochs
    warm = int(recipe.warmup_epochs * steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < warm:
            return recipe.lr * (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * t))

    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    hist = History()
    step = 0
    # on a GPU: the (uint8) training set lives on the device, and the loss is read back only
    # every `sync_every` steps, so the host never waits on each step (small models are
    # launch-bound); a NaN is then caught within that many steps
    sync_every = 1 if device.type == "cpu" else 25
    train_x, train_y = data.train.x, data.train.y
    if device.type == "cuda":
        train_x, train_y = train_x.to(device), train_y.to(device)
    for epoch in range(recipe.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        ahead = None
        if device.type == "cuda":  # one host→device copy per epoch, not several per step
            perm = perm.to(device)
            if recipe.augment:
                ahead = [t if t is None else t.to(device) for t in
                         draw_offsets(n, crop_pad(*train_x.shape[-2:]), data.flip, gen)]
        t0 = time.perf_counter()
        loss_sum, seen = torch.zeros((), device=device), 0
        pending_loss = []
        for i in range(steps_per_epoch):
            sl = slice(i * recipe.batch_size, (i + 1) * recipe.batch_size)
            idx = perm[sl]
            xb, yb = train_x[idx].to(device), train_y[idx].to(device)
            xb = _normalise(xb, mean, std)
            if recipe.augment:
                xb = augment(xb, flip=data.flip, gen=gen,
                             offsets=None if ahead is None else tuple(t if t is None else t[sl] for t in ahead))
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=recipe.label_smoothing)
            pending_loss.append(loss.detach())
            if (i + 1) % sync_every == 0 or i + 1 == steps_per_epoch:
                recent = torch.stack(pending_loss)
                if not bool(torch.isfinite(recent).all()):
                    bad = int((~torch.isfinite(recent)).nonzero()[0, 0])
                    raise Diverged(f"loss became {recent[bad].item()} at epoch {epoch + 1}, step "
                                   f"{i + 2 - len(pending_loss) + bad}; try a lower --lr (now {recipe.lr:g})")
                pending_loss = []
                if on_step:
                    on_step(epoch, i, float(recent[-1]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
            opt.step()
            step += 1
            loss_sum += loss.detach() * len(idx)
            seen += len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        hist.train_seconds += seconds
        hist.train_images += seen
        metrics = {"epoch": epoch + 1, "loss": float(loss_sum) / seen, "train_throughput": seen / seconds,
                   "epoch_seconds": seconds, "lr": lr_at(step - 1),
                   **evaluate(model, data, device=device, batch_size=recipe.eval_batch_size, autocast=use_amp)}
        hist.epochs.append(metrics)
        if callback:
            callback(epoch + 1, metrics)
    return hist
