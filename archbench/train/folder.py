"""Image folders that do not fit in memory: a file list, two datasets and one loader.

An image folder (``root/<class>/<image>``) is either streamed from disk (:class:`FileImages`:
each sample is opened, decoded and augmented in a DataLoader worker) or decoded once into a
uint8 cache at about the model's resolution (:func:`decode_split` → :class:`DecodedImages`);
:func:`choose_cache` picks between them for ``--cache auto|memory|disk``. Both datasets take
the same kind of ``transform`` (a PIL image → a normalised float tensor, e.g. from
``timm.data.create_transform``) and both go through :func:`make_loader`.

A file that cannot be read or decoded never raises inside a worker: the dataset returns a
marker, :func:`collate_skip_bad` leaves it out of the batch and passes its path on, and the
main process tallies it with :class:`BadImages` (one warning per file, a summary at the
end, a one-line error when there are too many).
"""
from __future__ import annotations

import itertools
import os
import random
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from archbench.errors import UsageError
from archbench.train.stop import ignore_in_worker

CACHE_MODES = ("auto", "memory", "disk")
Transform = Callable[[Image.Image], torch.Tensor]

IMG_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}


def scan_split(root: Path, classes: list[str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """The ``(path, label)`` pairs of ``root/<class>/<image>``, sorted by class then file name,
    and the class list (``classes`` given: that order, e.g. the training split's).

    Only names are listed (``os.scandir``, no image is opened), so 1.28 M files take seconds.
    Hidden entries are left out: ``.ipynb_checkpoints/`` is no class, ``._x.jpg`` no image."""
    root = Path(root)
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    classes = list(classes) if classes is not None else found
    extra = sorted(set(found) - set(classes))
    if extra:
        raise UsageError(f"{root} has class folders not among the training classes: {', '.join(extra[:5])}")
    files = []
    for label, name in enumerate(classes):
        if not (root / name).is_dir():
            continue  # a held-out split may lack a class
        images = sorted(e.name for e in os.scandir(root / name) if not e.name.startswith(".")
                        and os.path.splitext(e.name)[1].lower() in IMG_EXTS and e.is_file())
        files += [(str(root / name / f), label) for f in images]
    if not files:
        raise UsageError(f"no images under {root} (expected {root}/<class>/<image>.jpg)")
    return files, classes


GREY_MODES = ("L", "LA", "I", "I;16", "1")  # PIL modes of grey (or binary) images


def image_mode(files: list[tuple[str, int]], sample: int = 16) -> str:
    """``"RGB"`` when any of ``sample`` images spread over ``files`` is in colour, else ``"L"``
    (grey or binary): a grey image read as RGB loses nothing, a colour one read as grey does.
    Only headers are read; unreadable files are passed over (the loader reports them)."""
    def mode(path: str) -> str | None:
        try:
            with Image.open(path) as im:
                return im.mode
        except Exception:  # noqa: BLE001 - unreadable: the loader names it
            return None

    modes = [m for m in (mode(p) for p, _ in files[::max(1, len(files) // sample)][:sample]) if m]
    if not modes:  # every sampled file is unreadable: the first readable one decides
        modes = next(([m] for m in (mode(p) for p, _ in files) if m), [])
    if not modes:
        raise UsageError(f"none of the {len(files)} images is readable, e.g. {files[0][0]}")
    return "L" if all(m in GREY_MODES for m in modes) else "RGB"


def load_image(path: str, mode: str, draft: int | None = None) -> Image.Image | None:
    """The decoded image in ``mode``, or None when the file cannot be read or decoded.

    ``draft``: let a JPEG decoder scale down by a power of two while both sides stay at
    least ``draft`` pixels (much faster on large photos; only where the caller resizes
    down to ``draft`` anyway)."""
    try:
        with Image.open(path) as im:
            if draft:
                im.draft(mode, (draft, draft))
            return im.convert(mode)  # convert() loads: a truncated file fails here, not later
    # PIL raises many types for a bad file (OSError, SyntaxError, EOFError, struct.error,
    # DecompressionBombError, ...); none of them may escape a worker process
    except Exception:  # noqa: BLE001
        return None


class FileImages(Dataset):
    """Streams an image folder from disk: ``(transform(image), label)`` per sample, or
    ``(None, label, path)`` for a file that cannot be decoded (see :func:`collate_skip_bad`)."""

    def __init__(self, files: list[tuple[str, int]], transform: Transform, mode: str, *, draft: int | None = None):
        # numpy arrays, not a list of Python objects: a forked worker that touches list items
        # bumps their refcounts and so copies those pages, one file list per worker (pytorch#13246)
        self.paths = np.array([os.fsencode(p) for p, _ in files])
        self.labels = np.array([label for _, label in files], dtype=np.int64)
        self.transform, self.mode, self.draft = transform, mode, draft

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        path, label = os.fsdecode(self.paths[i]), int(self.labels[i])
        im = load_image(path, self.mode, self.draft)
        if im is None:
            return None, label, path
        return self.transform(im), label


class DecodedImages(Dataset):
    """The memory cache: images decoded once to uint8 ``x`` (N, C, S, S) with labels ``y``;
    each sample is turned back into a PIL image and goes through ``transform``, as a
    streamed one would. Only uint8 is held; floats exist one batch at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        a = self.x[i].permute(1, 2, 0).numpy()  # (S, S, C)
        return self.transform(Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)), int(self.y[i])


def square_uint8(im: Image.Image, size: int) -> torch.Tensor:
    """The image resized so its shorter side is ``size`` and centre-cropped to ``size`` x
    ``size`` (done as one bicubic resize of the central square), as uint8 (C, size, size)."""
    w, h = im.size
    s = min(w, h)
    im = im.resize((size, size), Image.BICUBIC, box=((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2))
    return torch.from_numpy(np.array(im)).reshape(size, size, -1).permute(2, 0, 1)


def decode_split(files: list[tuple[str, int]], size: int, mode: str, workers: int,
                 progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode a split for :class:`DecodedImages`: ``(x, y, bad_paths)``, ``x`` uint8 (N, C,
    size, size), every image resized (shorter side = ``size``) and centre-cropped.

    ``size`` is chosen by the caller as ``ceil(img_size / crop_pct)`` (256 for a 224 model),
    not the model's size, so RandomResizedCrop keeps a margin to crop from and the eval
    transform's resize + centre crop sees what it would see on disk; the square crop drops
    the sides of non-square images, the price of one fixed-shape tensor. ``workers``
    processes decode in parallel; ``progress(done, total)`` is called after each batch."""
    chans = 1 if mode == "L" else 3
    ds = FileImages(files, partial(square_uint8, size=size), mode, draft=size)
    loader = DataLoader(ds, batch_size=64, num_workers=workers, collate_fn=collate_skip_bad,
                        worker_init_fn=ignore_in_worker)
    x = torch.empty((len(files), chans, size, size), dtype=torch.uint8)  # the only copy of the pixels
    y = torch.empty(len(files), dtype=torch.int64)
    n, bad = 0, []
    for xb, yb, bad_b in loader:  # in file order; good images are packed to the front
        if len(yb):
            x[n:n + len(yb)], y[n:n + len(yb)] = xb, yb
        n += len(yb)
        bad += bad_b
        if progress:
            progress(n + len(bad), len(files))
    # a view, not a copy: the unused tail is one image per bad file
    return x[:n], y[:n], bad


def decoded_bytes(n: int, chans: int, size: int) -> int:
    """Bytes of ``n`` images decoded to uint8 at ``size`` x ``size``."""
    return n * chans * size * size


def choose_cache(mode: str, n: int, chans: int, size: int, cache_gb: float, *,
                 split: str = "train") -> tuple[str, str]:
    """``("memory" | "disk", why)`` for ``--cache mode``: ``auto`` keeps the decoded split in
    memory when it fits in ``cache_gb`` (1 GB = 1e9 bytes) and streams it otherwise."""
    if mode not in CACHE_MODES:
        raise UsageError(f"unknown --cache {mode!r}; allowed: {', '.join(CACHE_MODES)}")
    if not cache_gb >= 0:
        raise UsageError(f"--cache-gb must be a number >= 0, got {cache_gb!r}")
    gb = decoded_bytes(n, chans, size) / 1e9
    what = f"the decoded {split} split is {gb:.2f} GB at {size} px"
    if mode == "disk":
        return "disk", f"cache disk: streaming the {split} split from disk"
    if mode == "memory":
        return "memory", f"cache memory: {what}, held in memory"
    if gb <= cache_gb:
        return "memory", f"cache auto: {what}, within --cache-gb {cache_gb:g}: held in memory"
    return "disk", f"cache auto: {what}, over --cache-gb {cache_gb:g}: streaming from disk"


def collate_skip_bad(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(x, y, bad_paths)``: the good samples stacked, the undecodable ones' paths. A batch
    can come out shorter than asked (empty, ``x`` of shape (0,), if every file was bad)."""
    good = [s for s in batch if s[0] is not None]
    x = torch.stack([s[0] for s in good]) if good else torch.empty(0)
    y = torch.tensor([s[1] for s in good], dtype=torch.int64)
    return x, y, [s[2] for s in batch if s[0] is None]


class BadImages:
    """Tallies the unreadable files the loader reports (main process): warns once per file
    through ``warn`` (default: a line on stderr) and raises ValueError, one line, as soon as
    more than ``max_bad`` are bad."""

    def __init__(self, max_bad: int = 10, warn: Callable[[str], None] | None = None):
        if not (isinstance(max_bad, int) and max_bad >= 0):
            raise UsageError(f"max_bad must be an integer >= 0, got {max_bad!r}")
        self.max_bad = max_bad
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self.paths: dict[str, None] = {}  # insertion-ordered set: a file is met again every epoch

    def __len__(self) -> int:
        return len(self.paths)

    def add(self, paths: list[str]) -> None:
        for p in paths:
            if p not in self.paths:
                self.paths[p] = None
                self.warn(f"warning: skipping unreadable image {p}")
        if len(self.paths) > self.max_bad:
            raise UsageError(f"too many unreadable images ({len(self.paths)} so far, e.g. "
                             f"{', '.join(list(self.paths)[:3])}); fix or remove them")

    def summary(self) -> str | None:
        """One line naming the skipped files, or None when there were none."""
        if not self.paths:
            return None
        n = len(self.paths)
        return f"skipped {n} unreadable image{'s' if n > 1 else ''}: {', '.join(self.paths)}"


class _EpochIndices(torch.utils.data.Sampler):
    """A DistributedSampler whose indices carry the epoch (``epoch * n + i``), so each sample
    can seed its own augmentation (:class:`_SeededSamples`)."""

    def __init__(self, inner: DistributedSampler, n: int):
        self.inner, self.n, self.skip = inner, n, 0

    def __iter__(self):
        base = self.inner.epoch * self.n
        return (base + i for i in itertools.islice(self.inner, self.skip, None))

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def epoch(self) -> int:
        return self.inner.epoch

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """The epoch's order; ``skip``: leave out its first that many indices (a resumed epoch)."""
        self.inner.set_epoch(epoch)
        self.skip = skip


class _SeededSamples(Dataset):
    """Seeds python, numpy and torch from (seed, epoch, index) before each sample's transform:
    a sample's augmentation is the same whichever worker draws it, however many workers
    there are, and whether or not the run was resumed in between."""

    def __init__(self, ds: Dataset, seed: int):
        self.ds, self.seed, self.n = ds, seed, len(ds)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int):
        epoch, i = divmod(j, self.n)
        s = int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1, np.uint64)[0])
        random.seed(s)
        np.random.seed(s % 2 ** 32)
        torch.manual_seed(s)
        return self.ds[i]


def make_loader(ds: Dataset, *, batch_size: int, shuffle: bool, drop_last: bool, workers: int, seed: int,
                rank: int = 0, world_size: int = 1, persistent: bool = True) -> DataLoader:
    """The loader for a :class:`FileImages` or :class:`DecodedImages`; batches are
    ``(x, y, bad_paths)`` (:func:`collate_skip_bad`).

    The order comes from a DistributedSampler, also for one process, so it is seeded and
    changes per epoch: the loop must call ``loader.sampler.set_epoch(epoch)`` before
    iterating each epoch. With ``world_size`` > 1 and ``drop_last=False`` the sampler repeats
    a few samples so every rank gets as many. Every sample's augmentation is seeded from
    ``seed``, the epoch and its index, so a run's draws do not depend on the worker count,
    and a resumed run draws exactly what an uninterrupted one would. Workers are kept between
    epochs unless ``persistent`` is False."""
    if not (isinstance(seed, int) and seed >= 0):
        raise UsageError(f"seed must be an integer >= 0, got {seed!r}")
    sampler = _EpochIndices(DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                               drop_last=drop_last), len(ds))
    return DataLoader(_SeededSamples(ds, seed), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      worker_init_fn=ignore_in_worker,  # a stop signal is the main process's to handle
                      # each iterator draws its workers' base seed from this, not from the global RNG
                      # (which drop path and Mixup draw from): a run resumed inside an epoch, whose
                      # iterator starts at another moment, draws as an uninterrupted one does
                      generator=torch.Generator().manual_seed(seed),
                      num_workers=workers, collate_fn=collate_skip_bad, pin_memory=torch.cuda.is_available(),
                      persistent_workers=persistent and workers > 0, prefetch_factor=2 if workers > 0 else None)
