"""Training recipes: every knob of how a model is trained, as one frozen record stored with
every run, and the named presets users start from.

- ``small``: archbench's recipe for small images held in memory (digits, CIFAR): AdamW,
  linear warm-up then cosine to zero per step, label smoothing, pad-and-crop + flip on whole
  tensors. The default; its numbers are unchanged from archbench 0.1.
- ``deit``: the DeiT recipe (Touvron et al. 2021, Table 9; facebookresearch/deit
  ``main.py`` argument defaults, which timm's ``train.py`` follows).
- ``shiftvit``: ShiftViT trains "following Swin" (microsoft/SPACH README); these are Swin's
  ``config.py`` defaults (microsoft/Swin-Transformer) with ShiftViT-T's drop path.

In ``deit`` and ``shiftvit`` the learning rates are given per 512 images and scaled by the
global batch (``lr_base_batch``), as both official codes do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any
from archbench.errors import UsageError

TRANSFORMS = ("tensor", "timm")  # tensor: batched pad-crop/flip in memory; timm: create_transform per image
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained; stored with every run (``as_dict``)."""

    epochs: int = 30
    batch_size: int = 64  # global: all ranks together
    lr: float = 2e-3  # peak; with lr_base_batch N, per N images (scaled by batch_size / N)
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    clip_grad: float = 1.0  # max global grad norm; 0 disables
    augment: bool = True  # False: no augmentation at all
    eval_batch_size: int = 256
    # --- fields added with the paper-scale recipes; their defaults are the small recipe's behaviour
    name: str = "small"
    lr_base_batch: int = 0  # 0: lr is absolute
    warmup_lr: float = 0.0  # lr at the start of warm-up (scaled like lr); small: lr/warmup_steps
    min_lr: float = 0.0  # end of the cosine (scaled like lr)
    transform: str = "tensor"
    interpolation: str = "bilinear"  # resizing in the timm transforms
    rand_augment: str = ""  # timm auto_augment string, e.g. rand-m9-mstd0.5-inc1 ('' = none)
    color_jitter: float = 0.0  # timm ignores it when rand_augment is set
    reprob: float = 0.0  # random erasing probability (pixel mode)
    crop_pct: float = 0.875  # evaluation: resize to img/crop_pct, centre crop
    mixup: float = 0.0  # Mixup alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    drop_path: float | None = None  # None: the model spec's own
    ema_decay: float = 0.0  # EMA of the weights (timm ModelEmaV3); 0: off
    # micro-batches per optimiser step: each rank's batch is split into this many forward/backward
    # passes whose gradients add up to the whole batch's (the recipe's batch on fewer devices);
    # another run only where batch statistics are per micro-batch (BatchNorm)
    accum_steps: int = 1

    def check(self) -> None:
        """Raise ValueError (one line, naming the field) for values no run can use."""
        for name in ("epochs", "batch_size", "eval_batch_size", "accum_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"{name} must be a positive integer, got {v!r}")
        if self.batch_size % self.accum_steps:
            raise UsageError(f"batch_size {self.batch_size} must be divisible by accum_steps {self.accum_steps} "
                             "(the micro-batches of one optimiser step)")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr!r}")
        for name in ("weight_decay", "warmup_epochs", "clip_grad", "warmup_lr", "min_lr", "mixup", "cutmix",
                     "color_jitter", "lr_base_batch"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("reprob", "mixup_prob", "mixup_switch_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not 0 < self.crop_pct <= 1:
            raise UsageError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise UsageError(f"drop_path must be in [0, 1), got {self.drop_path!r}")
        if self.transform not in TRANSFORMS:
            raise UsageError(f"transform must be one of {', '.join(TRANSFORMS)}, got {self.transform!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.rand_augment and not self.rand_augment.startswith("rand-"):
            raise UsageError(f"rand_augment takes a timm RandAugment string like rand-m9-mstd0.5-inc1, "
                             f"got {self.rand_augment!r}")
        if self.transform == "tensor" and (self.rand_augment or self.reprob or self.color_jitter):
            raise UsageError("rand_augment, reprob and color_jitter need transform=timm (the per-image "
                             "transforms); the tensor transform only crops and flips")

    # --- derived quantities -----------------------------------------------------------------
    def scaled(self, value: float) -> float:
        """A learning rate of this recipe at its global batch (DeiT: lr × batch / 512)."""
        return value * self.batch_size / self.lr_base_batch if self.lr_base_batch else value

    @property
    def peak_lr(self) -> float:
        return self.scaled(self.lr)

    @property
    def uses_mixup(self) -> bool:
        return self.augment and (self.mixup > 0 or self.cutmix > 0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that make a run different: the original fields, plus every later field
        that is not at its default — so runs made before these fields existed keep their keys."""
        base = Recipe()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in _ORIGINAL or getattr(self, f.name) != getattr(base, f.name)}


_ORIGINAL = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "label_smoothing", "clip_grad",
             "augment", "eval_batch_size")

PRESETS: dict[str, Recipe] = {
    "small": Recipe(),
    # facebookresearch/deit main.py defaults: batch 64/GPU × 16 GPUs, lr 5e-4 per 512,
    # warm-up 5 epochs from 1e-6, cosine to 1e-5, wd 0.05, smoothing 0.1, no clipping,
    # Mixup 0.8 / CutMix 1.0 (prob 1, switch 0.5), rand-m9-mstd0.5-inc1, RE 0.25,
    # bicubic, drop path 0.1, eval crop 0.875; EMA optional (ema_decay 0.99996 there)
    "deit": Recipe(name="deit", epochs=300, batch_size=1024, lr=5e-4, lr_base_batch=512, weight_decay=0.05,
                   warmup_epochs=5.0, warmup_lr=1e-6, min_lr=1e-5, label_smoothing=0.1, clip_grad=0.0,
                   transform="timm", interpolation="bicubic", rand_augment="rand-m9-mstd0.5-inc1",
                   color_jitter=0.3, reprob=0.25, crop_pct=0.875, mixup=0.8, cutmix=1.0, drop_path=0.1),
    # Swin config.py: batch 128/GPU × 8, BASE_LR 5e-4, WARMUP_LR 5e-7, MIN_LR 5e-6 (all per
    # 512), 20 warm-up epochs, wd 0.05, CLIP_GRAD 5.0, the same augmentation as DeiT;
    # drop path 0.2 is ShiftViT-T's (SPACH config for shiftvit tiny)
    "shiftvit": Recipe(name="shiftvit", epochs=300, batch_size=1024, lr=5e-4, lr_base_batch=512,
                       weight_decay=0.05, warmup_epochs=20.0, warmup_lr=5e-7, min_lr=5e-6, label_smoothing=0.1,
                       clip_grad=5.0, transform="timm", interpolation="bicubic",
                       rand_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, reprob=0.25, crop_pct=0.875,
                       mixup=0.8, cutmix=1.0, drop_path=0.2),
}


def recipe(name: str = "small", **overrides: Any) -> Recipe:
    """A preset with some fields changed (``None`` values are ignored), checked."""
    if name not in PRESETS:
        raise UsageError(f"unknown recipe {name!r}; known: {', '.join(PRESETS)}")
    known = {f.name for f in fields(Recipe)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise UsageError(f"unknown recipe field {bad[0]!r}; known: {', '.join(sorted(known))}")
    r = replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
    r.check()
    return r
