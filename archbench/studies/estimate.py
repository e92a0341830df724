"""Device-hours of a study before it runs: each distinct arm's training step timed on this
device, scaled to the runs' images, epochs and seeds.

Per run: seconds per image (a timed step over its batch) × images per epoch × epochs. The
step is the training loop's (:func:`archbench.train.loop.train`): forward under the loop's
numerics (bf16 autocast on a GPU, fp32 on a CPU), cross-entropy with the recipe's smoothing,
backward, gradient clipping, AdamW and the EMA when the recipe has one, on random images of
the spec's size. Not included: data loading and augmentation, the per-epoch evaluation,
checkpoints, and the all-reduce of a data-parallel run (device-hours are taken to be the same
on one GPU or several). Timed on a CPU, it gives CPU-hours of that CPU, not a GPU estimate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from archbench.ablate.plan import Ablation
from archbench.spec import ArchSpec
from archbench.train.recipe import Recipe
from archbench.errors import UsageError

CPU_BATCH = 2  # a step of a ~20-50M-parameter model at 224 px takes seconds on a CPU: keep it cheap


@dataclass(frozen=True)
class ArmTime:
    """One distinct arm, timed: ``step_seconds`` is one training step at ``batch``."""

    arm: str
    section: str  # the first section that holds the arm
    gmacs: float
    params: int
    batch: int
    step_seconds: float
    seeds: int  # runs of this arm (one per seed)

    @property
    def image_seconds(self) -> float:
        return self.step_seconds / self.batch


@dataclass(frozen=True)
class Estimate:
    """Device-hours of a study's distinct runs, from step times measured on ``device``."""

    device: str  # the device's name, as rows record it
    gpu: bool
    images: int  # training images per epoch
    epochs: int
    arms: tuple[ArmTime, ...]
    requested_batch: int  # what was asked; an arm's batch is lower after a CUDA out-of-memory

    @property
    def unit(self) -> str:
        return "GPU-hours" if self.gpu else "CPU-hours"

    def run_hours(self, arm: ArmTime) -> float:
        """Hours of one run (one seed) of ``arm``."""
        return arm.image_seconds * self.images * self.epochs / 3600

    def total(self, seeds: int | None = None) -> float:
        """Hours of every run: each arm's seeds, or ``seeds`` per arm."""
        return sum(self.run_hours(a) * (a.seeds if seeds is None else seeds) for a in self.arms)


def timing(device: str, recipe: Recipe, nproc_per_run: int = 1, batch_size: int | None = None) -> dict[str, int]:
    """How to time the steps on ``device`` (``estimate``'s batch_size, warmup, repeats): on a CPU
    a small batch, one warm-up step and two timed; on a GPU the run's own per-GPU batch (a small
    one there times kernel launches, not the model) and more steps (cuDNN picks its kernels in
    the first)."""
    if str(device).startswith("cuda"):
        return dict(batch_size=batch_size or max(1, recipe.batch_size // max(1, nproc_per_run)), warmup=3, repeats=5)
    return dict(batch_size=batch_size or CPU_BATCH, warmup=1, repeats=2)


def train_step_seconds(spec: ArchSpec, recipe: Recipe, *, device: str, batch_size: int, warmup: int = 1,
                       repeats: int = 2) -> tuple[float, int]:
    """Seconds of one training step of ``spec`` at ``batch_size`` (the fastest of ``repeats``
    timed steps after ``warmup`` untimed ones: on a shared machine others' load only slows a
    step), and the batch used (halved after each CUDA out-of-memory)."""
    import torch

    if recipe.drop_path is not None:  # as train.run does: drop path changes the step's work
        spec = spec.replace(drop_path=recipe.drop_path)
    while True:
        try:
            with torch.random.fork_rng(devices=[]):  # init, inputs and drop path leave the caller's stream alone
                return min(_step_times(spec, recipe, torch.device(device), batch_size, warmup, repeats)), batch_size
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
        torch.cuda.empty_cache()  # here, not in the except: its traceback holds the model until it ends
        batch_size //= 2


def _step_times(spec: ArchSpec, recipe: Recipe, dev, batch_size: int, warmup: int, repeats: int) -> list[float]:
    import torch
    import torch.nn.functional as F

    from archbench.ablate.plan import GPU_NUMERICS, numerics
    from archbench.builder import build_model
    from archbench.measure.speed import time_calls
    from archbench.train.loop import param_groups, update

    model = build_model(spec).to(dev).train()
    x = torch.randn(batch_size, spec.in_chans, *spec.img_size).to(dev)  # (B, C, H, W)
    y = torch.randint(0, spec.num_classes, (batch_size,)).to(dev)
    opt = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.peak_lr)
    ema = None
    if recipe.ema_decay:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=recipe.ema_decay)
    amp = numerics(str(dev)) == GPU_NUMERICS

    def step():
        # the loop's step; Mixup's soft-target loss costs what this one does
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        update(model, opt, loss, clip_grad=recipe.clip_grad, ema=ema)

    return time_calls(step, dev, warmup, repeats)


StepFn = Callable[..., tuple[float, int]]


def estimate(sections: Sequence[tuple[str, Ablation]], *, images: int, device: str, batch_size: int,
             warmup: int = 1, repeats: int = 2, step_fn: StepFn = train_step_seconds,
             on_arm: Callable[[str], None] | None = None) -> Estimate:
    """Time each distinct arm of ``sections`` ((section key, ablation) pairs; an arm shared by
    sections is one model and is timed and counted once) and scale to the runs' size."""
    import torch

    from archbench.measure.speed import device_name

    if images < 1:
        raise UsageError(f"the training split has no images to estimate from (got {images})")
    seen: dict[str, ArmTime] = {}
    epochs = None
    for key, abl in sections:
        if epochs is None:
            epochs = abl.recipe.epochs
        elif abl.recipe.epochs != epochs:
            raise ValueError(f"section {key!r} trains {abl.recipe.epochs} epochs, the others {epochs}")
        for arm in abl.arms:
            if arm.key in seen:
                continue
            if on_arm:
                on_arm(arm.id)
            secs, used = step_fn(arm.spec, abl.recipe, device=device, batch_size=batch_size, warmup=warmup,
                                 repeats=repeats)
            seen[arm.key] = ArmTime(arm.id, key, arm.cost.gmacs, arm.cost.params, used, secs, len(abl.seeds))
    dev = torch.device(device)
    return Estimate(device_name(dev), dev.type == "cuda", images, epochs or 0, tuple(seen.values()), batch_size)
