"""Where a run's batches come from: tensors in memory, or a DataLoader over images.

- :class:`MemoryBatches`: the whole split is a uint8 tensor at the model's input size; each
  batch is sliced, normalised and cropped/flipped as one tensor (the ``tensor`` transform of
  the small recipe). On a GPU the split lives on the device and an epoch's crop offsets are
  drawn at once, so small models never wait on the host.
- :class:`LoaderBatches`: a DataLoader (worker processes, pinned memory) over images decoded
  in memory or streamed from disk, with timm's per-image transforms (the ``timm``
  transform of the DeiT/ShiftViT recipes), or a plain resize for the ``tensor`` transform.

Both shard by rank under torchrun: every rank sees a different part of each global batch
(``recipe.batch_size`` = per-rank batch × world size) and of the test split.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from archbench.train.dist import Dist
from archbench.errors import UsageError


def crop_pad(h: int, w: int) -> int:
    return max(1, round(4 * min(h, w) / 32))


def draw_offsets(n: int, pad: int, flip: bool, gen: torch.Generator | None):
    """Crop offsets and flip mask for ``n`` images (in the order :func:`augment` draws them)."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    mask = (torch.rand(n, generator=gen) < 0.5) if flip else None
    return dy, dx, mask


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


def per_rank(batch_size: int, ctx: Dist) -> int:
    if batch_size % ctx.world_size:
        raise UsageError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                         f"world size {ctx.world_size} (torchrun --nproc_per_node × nodes)")
    return batch_size // ctx.world_size


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x.float().div_(255) - mean) / std


class MemoryBatches:
    """Batches sliced from a :class:`~archbench.train.data.Dataset` already at the model's size."""

    def __init__(self, data, *, batch_size: int, eval_batch_size: int, augment: bool, device: torch.device,
                 ctx: Dist = Dist()):
        self.data, self.device, self.ctx, self.augment = data, device, ctx, augment
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.local = per_rank(batch_size, ctx)
        self.n_train = len(data.train.y)
        self.steps_per_epoch = max(1, self.n_train // batch_size)  # drop the last partial batch: BN needs > 1
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.train_x, self.train_y = data.train.x, data.train.y
        if device.type == "cuda":  # the (uint8) set lives on the GPU: no host→device copy per step
            self.train_x, self.train_y = self.train_x.to(device), self.train_y.to(device)

    def train_epoch(self, epoch: int, gen: torch.Generator, start: int = 0,
                    resume: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's (x, y) for this rank; draws order and augmentation from ``gen`` (the same
        draws on every rank, so all ranks agree on the order). ``start``: begin at that step,
        ``gen`` (at the epoch's start) set to ``resume`` (its state after step ``start`` - 1)
        once the epoch's order is drawn."""
        n, B, b, r = self.n_train, self.batch_size, self.local, self.ctx.rank
        perm = torch.randperm(n, generator=gen)
        ahead = None
        cuda = self.device.type == "cuda"
        if cuda:  # one host→device copy per epoch, not several per step
            perm = perm.to(self.device)
            if self.augment:
                ahead = [t if t is None else t.to(self.device) for t in
                         draw_offsets(n, crop_pad(*self.train_x.shape[-2:]), self.data.flip, gen)]
        if start:
            gen.set_state(resume)
        for i in range(start, self.steps_per_epoch):  # every step has a whole global batch of B
            mine = slice(i * B + r * b, i * B + (r + 1) * b)
            idx = perm[mine]
            xb, yb = self.train_x[idx].to(self.device), self.train_y[idx].to(self.device)
            xb = _normalise(xb, self.mean, self.std)
            if self.augment:
                if ahead is None:  # drawn for the whole global batch, so every rank stays in step
                    ahead_g = draw_offsets(B, crop_pad(*xb.shape[-2:]), self.data.flip, gen)
                    # a set smaller than the batch makes one short batch: the offsets of its images
                    offs = tuple(t if t is None else t[r * b:r * b + len(idx)] for t in ahead_g)
                else:
                    offs = tuple(t if t is None else t[mine] for t in ahead)
                xb = augment(xb, flip=self.data.flip, offsets=offs)
            yield xb, yb

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.data.test.x[self.ctx.rank::self.ctx.world_size], self.data.test.y[self.ctx.rank::self.ctx.world_size]
        for xb, yb in zip(x.split(self.eval_batch_size), y.split(self.eval_batch_size)):
            yield _normalise(xb.to(self.device), self.mean, self.std), yb.to(self.device)


class LoaderBatches:
    """Batches from DataLoaders over a train and a test image dataset (``folder.FileImages`` or
    ``folder.DecodedImages``); unreadable files are skipped and tallied in ``bad``."""

    def __init__(self, train_ds, test_ds, *, batch_size: int, eval_batch_size: int, workers: int, seed: int,
                 device: torch.device, ctx: Dist = Dist(), bad=None, tensor_augment: tuple[bool, bool] | None = None):
        from torch.utils.data import Subset

        from archbench.train.folder import BadImages, make_loader

        self.device, self.ctx = device, ctx
        self.bad = bad if bad is not None else BadImages()
        self.n_train = len(train_ds)
        self.train = make_loader(train_ds, batch_size=per_rank(batch_size, ctx), shuffle=True, drop_last=True,
                                 workers=workers, seed=seed, rank=ctx.rank, world_size=ctx.world_size)
        if len(self.train) == 0:
            raise UsageError(f"{self.n_train} training images cannot fill one batch of {batch_size}; "
                             "lower --batch-size")
        shard = Subset(test_ds, range(ctx.rank, len(test_ds), ctx.world_size))  # no padding: exact counts
        # evaluation batches as large as the training ones (timm's default): at 224 px a batch
        # of 256 is 154 MB of floats, and each worker keeps two in flight
        # and its workers live only while it runs: each forked worker comes to hold a private copy
        # of much of this process's heap (copy-on-write pages touched by refcounts), ~0.4 GB here
        self.test = make_loader(shard, batch_size=min(eval_batch_size, self.train.batch_size), shuffle=False,
                                drop_last=False, workers=workers, seed=seed, persistent=False)
        self.steps_per_epoch = len(self.train)
        self.tensor_augment = tensor_augment  # (augment, flip) for the small recipe's batched crop/flip

    def _batches(self, loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, bad in loader:
            if bad:
                self.bad.add(bad)
            if len(y):
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_epoch(self, epoch: int, gen: torch.Generator, start: int = 0,
                    resume: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """As :meth:`MemoryBatches.train_epoch`; the order is the sampler's, and ``start`` skips
        that many batches of indices without reading their images. (A batch every image of
        which is unreadable yields no step: then ``start`` counts one step short. More than
        10 unreadable images stop a run, so only batches of at most 10 could.)"""
        self.train.sampler.set_epoch(epoch, skip=start * self.train.batch_size)
        if start:
            gen.set_state(resume)
        for xb, yb in self._batches(self.train):
            if self.tensor_augment and self.tensor_augment[0]:
                xb = augment(xb, flip=self.tensor_augment[1], gen=gen)
            yield xb, yb

    def eval_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._batches(self.test)

