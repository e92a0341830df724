"""The training loop: AdamW, warm-up then cosine decay per step, label smoothing or Mixup/CutMix
with soft targets, gradient clipping, an optional EMA of the weights, autocast on CUDA,
seeded and deterministic on CPU, data-parallel under torchrun, resumable from checkpoints.

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

from archbench.train.batches import augment  # noqa: F401 - re-exported (tests, callers of 0.1)
from archbench.train.checkpoint import Checkpointer, rng_state, set_rng_state
from archbench.train.dist import Dist
from archbench.train.recipe import Recipe
from archbench.train.stop import Stopped

__all__ = ["Recipe", "Diverged", "History", "train", "evaluate", "augment", "seed_everything"]


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, top1, top5, ...
    train_seconds: float = 0.0
    train_images: int = 0
    resumed_from: int = 0  # the epoch a checkpoint put this run at (0: trained from the start)

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


@torch.inference_mode()
def evaluate(model: nn.Module, batches, *, device: torch.device, num_classes: int, autocast: bool = False,
             ctx: Dist = Dist()) -> dict[str, float]:
    """Top-1/top-5 (%) on the test split (all ranks' shards summed), and eval throughput (images/s)."""
    model.eval()
    from archbench.train.evaluate import count_correct

    correct1 = correct5 = n = 0
    t0 = time.perf_counter()
    for xb, yb in batches.eval_batches():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(xb)
        c1, c5 = count_correct(logits, yb)
        correct1, correct5, n = correct1 + c1, correct5 + c5, n + len(yb)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    correct1, correct5, n, seconds = ctx.all_sum([correct1, correct5, n, seconds], device)
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n,
            "eval_throughput": n / (seconds / ctx.world_size)}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, position embeddings, class tokens and position tables."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or "cls_token" in name or "pos_embed" in name or "rel_pos" in name
             else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def update(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor | None, *, clip_grad: float = 0.0,
           ema=None, step: int | None = None) -> None:
    """One optimiser update from ``loss``: backward, clip the global grad norm, step, EMA; the
    gradients are then dropped, so the next forward runs without them held in memory.
    ``loss=None``: the gradients are already there (accumulated over micro-batches)."""
    if loss is not None:
        loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(model, step=step)


class Schedule:
    """The learning rate per optimiser step. ``step-cosine`` (small recipe): linear warm-up from
    lr/warm to lr, cosine to 0. Otherwise timm's cosine scheduler with warm-up from
    ``warmup_lr`` and a floor at ``min_lr`` (the DeiT/Swin schedule), stepped per update."""

    def __init__(self, opt, recipe: Recipe, steps_per_epoch: int):
        self.opt, self.recipe = opt, recipe
        self.total = steps_per_epoch * recipe.epochs
        self.warm = int(recipe.warmup_epochs * steps_per_epoch)
        self.timm = None
        if recipe.name != "small" or recipe.warmup_lr or recipe.min_lr:
            from timm.scheduler import CosineLRScheduler

            self.timm = CosineLRScheduler(opt, t_initial=self.total, lr_min=recipe.scaled(recipe.min_lr),
                                          warmup_t=self.warm, warmup_lr_init=recipe.scaled(recipe.warmup_lr),
                                          t_in_epochs=False)

    def _small(self, step: int) -> float:
        peak = self.recipe.peak_lr
        if step < self.warm:
            return peak * (step + 1) / self.warm
        t = (step - self.warm) / max(1, self.total - self.warm)
        return peak * 0.5 * (1 + math.cos(math.pi * t))

    def set(self, step: int) -> None:
        """Put the lr of optimiser step ``step`` into the optimiser."""
        if self.timm is not None:
            self.timm.step_update(step)
            return
        lr = self._small(step)
        for g in self.opt.param_groups:
            g["lr"] = lr

    @property
    def lr(self) -> float:
        """The lr the last step used."""
        return self.opt.param_groups[0]["lr"]


def accumulate(net: nn.Module, x: torch.Tensor, target: torch.Tensor, parts: int, criterion, use_amp: bool,
               device: torch.device) -> torch.Tensor:
    """Forward and backward of ``x`` in ``parts`` micro-batches (one: the batch as it is), each
    loss weighted by its share of the batch, so the gradients add up to those of the whole
    batch's mean loss (DDP reduces them once, on the last); returns that mean loss, detached."""
    import contextlib

    xs, ts = x.chunk(parts), target.chunk(parts)
    total = None
    for j, (xc, tc) in enumerate(zip(xs, ts)):
        last = j == len(xs) - 1
        sync = contextlib.nullcontext() if last or not hasattr(net, "no_sync") else net.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = criterion(net(xc), tc)
            if len(xs) > 1:
                loss = loss * (len(xc) / len(x))
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total


def _state(model, opt, ema, gen, step: int, hist: History) -> dict[str, Any]:
    """What a checkpoint holds besides where in an epoch it was taken."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "rng": rng_state(gen),
            "step": step, "history": {k: v for k, v in asdict(hist).items() if k != "resumed_from"}}


def train(model: nn.Module, batches, recipe: Recipe, *, num_classes: int, seed: int = 0,
          device: str | torch.device = "cpu", ctx: Dist = Dist(), checkpoint: Checkpointer | None = None,
          callback: Callable[[int, dict[str, float]], None] | None = None,
          on_step: Callable[[int, int, float], None] | None = None,
          say: Callable[[str], None] | None = None, compile: bool = False,
          stop: Callable[[], str | None] | None = None) -> History:
    """Train ``model`` on ``batches`` (:mod:`archbench.train.batches`); returns the history.

    ``callback(epoch, metrics)`` runs after each epoch's evaluation; ``on_step(epoch, step,
    loss)`` after each optimiser step (progress bars). With ``checkpoint``, the whole state is
    saved at each epoch end (rank 0), and every ``checkpoint.every`` optimiser steps inside an
    epoch too, and a saved state is resumed from: inside an epoch, at the step after it, with
    the same order, draws and sums as an uninterrupted run. ``say`` gets a line saying where a
    run resumes. ``compile``: the training steps through ``torch.compile``. ``stop`` (see
    :mod:`archbench.train.stop`) names a stop signal once one came: the loop then checkpoints at
    the next step it checks (each step on a CPU, every 25 on a GPU, the same step on every rank)
    and raises :class:`~archbench.train.stop.Stopped`."""
    recipe.check()
    device = torch.device(device)
    gen = seed_everything(seed)
    model.to(device)
    net = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:  # the training forward and backward only (DDP wrapped first, as torch advises):
        net = torch.compile(net)  # evaluation, EMA and checkpoints use the model itself
    use_amp = device.type == "cuda"
    opt = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.peak_lr)
    opt.zero_grad(set_to_none=True)  # update() clears gradients after its step: none may be left from before
    steps = batches.steps_per_epoch
    sched = Schedule(opt, recipe, steps)
    mixup = soft_ce = None
    if recipe.uses_mixup:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy
        soft_ce = SoftTargetCrossEntropy()
        mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                      switch_prob=recipe.mixup_switch_prob, mode="batch", label_smoothing=recipe.label_smoothing,
                      num_classes=num_classes)

    def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if mixup is not None:
            return soft_ce(logits.float(), target)
        return F.cross_entropy(logits.float(), target, label_smoothing=recipe.label_smoothing)

    ema = None
    if recipe.ema_decay:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=recipe.ema_decay)
    hist = History()
    step, start = 0, 0
    within = None  # a checkpoint taken inside an epoch: where in it, and the epoch's sums so far
    if checkpoint is not None:
        state = checkpoint.load()
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            set_rng_state(state["rng"], gen)
            hist = History(**state["history"])
            hist.resumed_from = start = len(hist.epochs)
            step = state["step"]
            within = state.get("within")
            if say:
                where = (f"inside epoch {start + 1}, after its step {within['step']} of {steps}" if within
                         else f"after epoch {start} of {recipe.epochs}")
                say(f"resuming from {checkpoint.state_path}: {where}")
    every = checkpoint.every if checkpoint is not None else 0
    # on a GPU the loss is read back only every `sync_every` steps, so the host never waits on
    # each step (small models are launch-bound); a NaN is then caught within that many steps
    sync_every = 1 if device.type == "cpu" else 25
    for epoch in range(start, recipe.epochs):
        net.train()
        t0 = time.perf_counter()
        loss_sum, seen, before = torch.zeros((), device=device), 0, 0.0
        first, resume_gen = 0, None
        if within is not None:  # continue this epoch after its first `first` steps, as if never stopped
            first, resume_gen, before = within["step"], gen.get_state(), within["seconds"]
            gen.set_state(within["gen_epoch"])  # the epoch's order is drawn again from its start
            # this rank's own sums so far (the epoch end adds up the ranks' in the same order as ever)
            loss_sum = torch.tensor(within["loss_sums"][ctx.rank], device=device)
            seen = within["seens"][ctx.rank]
            within = None
        gen_epoch = gen.get_state()
        pending_loss = []
        for i, (xb, yb) in enumerate(batches.train_epoch(epoch, gen, start=first, resume=resume_gen), start=first):
            if mixup is not None and len(yb) % 2:  # Mixup pairs images: a batch short of a bad file drops one
                xb, yb = xb[:-1], yb[:-1]
            target = yb
            if mixup is not None and len(yb):
                xb, target = mixup(xb, yb)
            sched.set(step)
            loss = accumulate(net, xb, target, recipe.accum_steps, criterion, use_amp, device)  # backward done
            pending_loss.append(loss)
            save_now = checkpoint is not None and every > 0 and (step + 1) % every == 0 and i + 1 < steps
            checked = (i + 1) % sync_every == 0 or i + 1 == steps or save_now
            if checked:  # no unchecked loss in a checkpoint
                recent = torch.stack(pending_loss)
                if not bool(torch.isfinite(recent).all()):
                    bad = int((~torch.isfinite(recent)).nonzero()[0, 0])
                    raise Diverged(f"loss became {recent[bad].item()} at epoch {epoch + 1}, step "
                                   f"{i + 2 - len(pending_loss) + bad}; try a lower --lr (now {recipe.lr:g})")
                pending_loss = []
                if on_step:
                    on_step(epoch, i, float(recent[-1]))
            update(model, opt, None, clip_grad=recipe.clip_grad, ema=ema, step=step)
            step += 1
            loss_sum += loss * len(yb)
            seen += len(yb)
            signalled = None
            if stop is not None and checked:  # every rank learns of a signal any rank got, at the same step
                signalled = stop()
                if ctx.enabled and ctx.all_sum([float(signalled is not None)], device)[0] > 0:
                    signalled = signalled or "a stop signal (on another rank)"
            if save_now or (signalled and checkpoint is not None):
                # every rank's sums gathered (one collective: each fills its own slots); rank 0 writes
                mine = [(float(loss_sum), seen) if r == ctx.rank else (0.0, 0) for r in range(ctx.world_size)]
                sums = ctx.all_sum([v for pair in mine for v in pair], device)
                if ctx.main:
                    checkpoint.save({**_state(model, opt, ema, gen, step, hist),
                                     "within": {"step": i + 1, "gen_epoch": gen_epoch, "loss_sums": sums[0::2],
                                                "seens": [int(n) for n in sums[1::2]],
                                                "seconds": before + time.perf_counter() - t0}})
            if signalled:
                raise Stopped(signalled, epoch + 1, i + 1, steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = before + time.perf_counter() - t0
        loss_total, seen_total = ctx.all_sum([float(loss_sum), seen], device)
        hist.train_seconds += seconds
        hist.train_images += int(seen_total)
        metrics = {"epoch": epoch + 1, "loss": loss_total / seen_total, "train_throughput": seen_total / seconds,
                   "epoch_seconds": seconds, "lr": sched.lr,
                   **evaluate(model, batches, device=device, num_classes=num_classes, autocast=use_amp, ctx=ctx)}
        if ema is not None:
            ema_m = evaluate(ema.module, batches, device=device, num_classes=num_classes, autocast=use_amp, ctx=ctx)
            metrics.update(ema_top1=ema_m["top1"], ema_top5=ema_m["top5"])
        hist.epochs.append(metrics)
        if checkpoint is not None and ctx.main:
            checkpoint.save(_state(model, opt, ema, gen, step, hist))
            checkpoint.save_history(hist.epochs)
        if callback:
            callback(epoch + 1, metrics)
    return hist
