"""From a loaded dataset, a model size and a recipe to the run's batches: decides where the
images live (memory or disk) and which transforms they go through.

- The ``tensor`` transform (small recipe) on data in memory: :class:`MemoryBatches` at the
  model's size — today's fast path (digits, CIFAR, small image folders).
- The ``timm`` transform (DeiT/ShiftViT recipes): per image, ``timm.data.create_transform``
  (RandomResizedCrop, flip, RandAugment, random erasing, bicubic) for training and the
  resize + centre-crop eval transform ``archbench eval`` uses, in DataLoader workers.
- An image folder is decoded into memory at about the model's resolution (never its native
  one) or streamed from disk, as ``--cache auto|memory|disk`` and ``--cache-gb`` say.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from archbench.train.batches import LoaderBatches, MemoryBatches
from archbench.train.data import Dataset, Folder, Split, _finish
from archbench.train.dist import Dist
from archbench.train.recipe import Recipe
from archbench.errors import UsageError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Inputs:
    """How a run reads its images (stored in its row)."""

    cache: str = "auto"  # auto | memory | disk (image folders)
    cache_gb: float = 4.0
    workers: int = 2  # DataLoader worker processes (per rank)

    def check(self) -> None:
        from archbench.train.folder import CACHE_MODES

        if self.cache not in CACHE_MODES:
            raise UsageError(f"unknown --cache {self.cache!r}; allowed: {', '.join(CACHE_MODES)}")
        if not self.cache_gb >= 0:
            raise UsageError(f"--cache-gb must be >= 0, got {self.cache_gb!r}")
        if not (isinstance(self.workers, int) and self.workers >= 0):
            raise UsageError(f"--workers must be an integer >= 0, got {self.workers!r}")


def transforms(recipe: Recipe, img_size: tuple[int, int], mean, std) -> tuple[Callable, Callable]:
    """(train, eval) per-image transforms: timm's for the timm transform; a plain resize to the
    model's size for the tensor transform (which crops and flips whole batches later)."""
    from timm.data import create_transform

    from archbench.train.compat import patch_timm_posterize

    patch_timm_posterize()  # before the RandAugment ops are looked up
    size = tuple(img_size)
    evaluate = create_transform(size, is_training=False, crop_pct=recipe.crop_pct,
                                interpolation=recipe.interpolation, mean=mean, std=std)
    if recipe.transform != "timm":
        from torchvision import transforms as T
        plain = T.Compose([T.Resize(size, antialias=True), T.ToTensor(), T.Normalize(mean, std)])
        return plain, plain
    if not recipe.augment:
        return evaluate, evaluate
    train = create_transform(size, is_training=True, auto_augment=recipe.rand_augment or None,
                             color_jitter=recipe.color_jitter, re_prob=recipe.reprob, re_mode="pixel",
                             interpolation=recipe.interpolation, mean=mean, std=std)
    return train, evaluate


def decode_size(recipe: Recipe, img_size: tuple[int, int]) -> int:
    """The side images are cached at: the model's for the tensor transform; for the timm one
    the eval resize, floor(img / crop_pct) as timm's eval transform has it (256 for 224, 36 for
    32), so random crops keep a margin and the eval transform's resize is the identity."""
    side = max(img_size)
    return side if recipe.transform != "timm" else math.floor(side / recipe.crop_pct)


def make_batches(data: Dataset | Folder, img_size: tuple[int, int], recipe: Recipe, inputs: Inputs, *,
                 seed: int, device: torch.device, ctx: Dist = Dist(),
                 say: Callable[[str], None] | None = None, bad=None):
    """The run's batches (``MemoryBatches`` or ``LoaderBatches``) and a dict of what was chosen.
    ``bad`` (a :class:`~archbench.train.folder.BadImages`) tallies the unreadable images, those
    met while decoding into memory and those met while streaming."""
    from archbench.train.folder import BadImages, DecodedImages, FileImages, choose_cache, decode_split

    inputs.check()
    say = say or (lambda line: None)
    img_size = tuple(img_size)
    kw = dict(batch_size=recipe.batch_size, eval_batch_size=recipe.eval_batch_size, device=device, ctx=ctx)
    bad = BadImages() if bad is None else bad
    chosen = {"cache": "memory", "transform": recipe.transform}
    folder = isinstance(data, Folder)
    if folder:
        size = decode_size(recipe, img_size)
        where, why = choose_cache(inputs.cache, data.n_train, data.in_chans, size, inputs.cache_gb)
        say(why)
        chosen["cache"] = where
        if where == "disk":
            mean, std = IMAGENET_MEAN[:data.in_chans], IMAGENET_STD[:data.in_chans]
            if recipe.transform != "timm":  # the memory path normalises by the decoded train split's own
                say("note: streaming with the tensor transform normalises by ImageNet's mean and std, not by "
                    "the train split's own as in memory (--cache memory for those)")
            tr, te = transforms(recipe, img_size, mean, std)
            chosen.update(mean=mean, std=std)
            return LoaderBatches(FileImages(data.train_files, tr, data.mode), FileImages(data.test_files, te, data.mode),
                                 workers=inputs.workers, seed=seed, bad=bad,
                                 tensor_augment=None if recipe.transform == "timm" else (recipe.augment, data.flip),
                                 **kw), chosen
        splits = []
        for files in (data.train_files, data.test_files):
            x, y, bad_paths = decode_split(files, size, data.mode, inputs.workers)
            bad.add(bad_paths)
            splits.append(Split(x, y))
        data = _finish(data.name, splits[0], splits[1], data.classes, data.flip)
    if recipe.transform == "timm":
        # ImageNet's statistics, as when streaming (and as DeiT's and timm's recipes): the memory
        # budget (--cache) must not change what the model sees, and `archbench eval` reads them too
        mean, std = (IMAGENET_MEAN[:data.in_chans], IMAGENET_STD[:data.in_chans]) if folder else (data.mean, data.std)
        tr, te = transforms(recipe, img_size, mean, std)
        chosen.update(mean=mean, std=std)
        return LoaderBatches(DecodedImages(data.train.x, data.train.y, tr), DecodedImages(data.test.x, data.test.y, te),
                             workers=inputs.workers, seed=seed, bad=bad, **kw), chosen
    chosen.update(mean=data.mean, std=data.std)
    n = len(data.train.y)
    if recipe.batch_size > n:  # streamed, this is refused (drop_last leaves no batch); here it trains on
        say(f"note: {n} training images, fewer than --batch-size {recipe.batch_size}: each epoch is one step "
            f"on a batch of {n}")
    return MemoryBatches(data.resized(img_size), augment=recipe.augment, **kw), chosen

