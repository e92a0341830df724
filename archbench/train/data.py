"""Datasets for training and evaluation, loaded once per process.

- ``digits``: scikit-learn's bundled 1,797 handwritten digits (8x8, grey; shipped inside the
  package, so it works offline) — the embedded default. A fixed stratified 80/20 split.
- ``cifar10`` / ``cifar100``: torchvision's loaders under ``--data-dir``; downloads only
  with ``download=True``.
- ``imagefolder``: ``--data-dir`` holding ``train/`` and ``val/`` (or ``test/``) with one
  folder per class (ImageNet, Imagenette, CIFAR-10 as JPEGs, ...), grey or RGB. Loading
  lists the files only; :mod:`archbench.train.inputs` decodes them at the model's resolution
  or streams them (``--cache``).

digits and CIFAR are held as uint8 tensors in memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from archbench.errors import UsageError

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")
# (classes, channels) of the named datasets, known without reading them: what a report of
# runs already trained needs (the run key), where the data itself may not be on this machine
SHAPES = {"digits": (10, 1), "cifar10": (10, 3), "cifar100": (100, 3)}


@dataclass
class Split:
    x: torch.Tensor  # (N, C, H, W) uint8
    y: torch.Tensor  # (N,) int64


@dataclass
class Dataset:
    """Train and test splits in memory, with what training needs to know about them."""

    name: str
    train: Split
    test: Split
    num_classes: int
    classes: list[str]
    mean: tuple[float, ...]  # per channel, of the training images in [0, 1]
    std: tuple[float, ...]
    flip: bool  # horizontal flips preserve the label (not for digits)
    native_size: tuple[int, int]

    @property
    def in_chans(self) -> int:
        return self.train.x.shape[1]

    @property
    def n_train(self) -> int:
        return len(self.train.y)

    @property
    def n_test(self) -> int:
        return len(self.test.y)

    def subset(self, train: int | None = None, test: int | None = None) -> "Dataset":
        """A class-balanced, deterministic subset: the first images of each class."""
        return Dataset(self.name, _balanced(self.train, train, self.num_classes),
                       _balanced(self.test, test, self.num_classes), self.num_classes, self.classes,
                       self.mean, self.std, self.flip, self.native_size)

    def resized(self, size: tuple[int, int]) -> "Dataset":
        if tuple(self.train.x.shape[-2:]) == tuple(size):
            return self
        return Dataset(self.name, _resize(self.train, size), _resize(self.test, size), self.num_classes,
                       self.classes, self.mean, self.std, self.flip, self.native_size)


def _balanced(split: Split, n: int | None, num_classes: int) -> Split:
    if n is None or n >= len(split.y):
        return split
    if n < num_classes:
        raise UsageError(f"a subset of {n} images cannot hold all {num_classes} classes")
    per = n // num_classes
    idx = torch.cat([torch.nonzero(split.y == c).flatten()[:per] for c in range(num_classes)]).sort().values
    return Split(split.x[idx], split.y[idx])


def _resize(split: Split, size) -> Split:
    out = []
    for chunk in split.x.split(4096):
        r = F.interpolate(chunk.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        out.append(r.round().clamp(0, 255).to(torch.uint8))
    return Split(torch.cat(out), split.y)


def _stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float().div(255)
    return tuple(xf.mean(dim=(0, 2, 3)).tolist()), tuple(xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())


def _finish(name, train, test, classes, flip) -> Dataset:
    if len(classes) < 2:
        raise UsageError(f"dataset {name!r} has {len(classes)} class; classification needs at least 2")
    mean, std = _stats(train.x)
    return Dataset(name, train, test, len(classes), classes, mean, std, flip, tuple(train.x.shape[-2:]))


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, stratify=d.target, random_state=0)
    idx_train, idx_test = torch.from_numpy(np.sort(idx_train)), torch.from_numpy(np.sort(idx_test))
    return _finish("digits", Split(x[idx_train], y[idx_train]), Split(x[idx_test], y[idx_test]),
                   [str(i) for i in range(10)], flip=False)


def load_cifar(name: str, data_dir: str | None, download: bool) -> Dataset:
    from torchvision import datasets

    if not data_dir:
        raise UsageError(f"{name} needs --data-dir (and --download to fetch it there)")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        tr, te = cls(data_dir, train=True, download=download), cls(data_dir, train=False, download=download)
    except RuntimeError as e:
        raise UsageError(f"{name} not found under {data_dir!r} ({e}); pass --download to fetch it") from None

    def split(ds):
        return Split(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))

    return _finish(name, split(tr), split(te), list(tr.classes), flip=True)


@dataclass
class Folder:
    """An image folder known by its file lists (nothing decoded yet): the images are decoded
    at the model's resolution or streamed once that is known (:mod:`archbench.train.inputs`)."""

    name: str
    train_files: list[tuple[str, int]]
    test_files: list[tuple[str, int]]
    classes: list[str]
    mode: str  # PIL mode the images are converted to: "RGB" or "L"
    native_size: tuple[int, int]  # (H, W) of the first training image
    flip: bool = True
    notes: tuple[str, ...] = ()  # one-line notes for the user (e.g. a held-out split converted)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def n_train(self) -> int:
        return len(self.train_files)

    @property
    def n_test(self) -> int:
        return len(self.test_files)

    def subset(self, train: int | None = None, test: int | None = None) -> "Folder":
        """A class-balanced, deterministic subset: the first files of each class."""
        def pick(files, n):
            if n is None or n >= len(files):
                return files
            if n < self.num_classes:
                raise UsageError(f"a subset of {n} images cannot hold all {self.num_classes} classes")
            per, count, out = n // self.num_classes, {}, []
            for f in files:
                if count.get(f[1], 0) < per:
                    count[f[1]] = count.get(f[1], 0) + 1
                    out.append(f)
            return out
        return Folder(self.name, pick(self.train_files, train), pick(self.test_files, test), self.classes,
                      self.mode, self.native_size, self.flip, self.notes)


def load_imagefolder(data_dir: str | None) -> Folder:
    from archbench.train.folder import image_mode, load_image, scan_split

    if not data_dir:
        raise UsageError("imagefolder needs --data-dir holding train/ and val/ (or test/)")
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"data dir {data_dir!r} does not exist")
    held = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not (root / "train").is_dir() or held is None:
        raise UsageError(f"{data_dir!r} must hold train/ and val/ (or test/), one folder per class inside")
    train, classes = scan_split(root / "train")
    if len(classes) < 2:
        raise UsageError(f"dataset {root.name!r} has {len(classes)} class; classification needs at least 2")
    test, _ = scan_split(held, classes)
    mode = image_mode(train)
    notes = []
    held_mode = image_mode(test)
    if held_mode != mode:  # both splits are read in the training split's mode: the model takes one
        kind = {"L": "greyscale", "RGB": "colour"}
        notes.append(f"{held.name}/ has {kind[held_mode]} images and train/ {kind[mode]} ones: {held.name}/ is read "
                     f"as {kind[mode]} too, as the model is trained ({1 if mode == 'L' else 3} channel"
                     f"{'s' if mode == 'RGB' else ''})")
    native = next((im.height, im.width) for im in (load_image(p, mode) for p, _ in train) if im is not None)
    return Folder(f"imagefolder:{root.name}", train, test, classes, mode, native, notes=tuple(notes))


_CACHE: dict[tuple, Dataset] = {}


def load_dataset(name: str, data_dir: str | None = None, download: bool = False) -> Dataset | Folder:
    """A dataset by name, decoded once per process (later calls return the same tensors)."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (ImageNet, or any set saved as "
                         "<split>/<class>/<image>: imagefolder with --data-dir)")
    key = (name, str(Path(data_dir).resolve()) if data_dir else None)
    if key not in _CACHE:
        if name == "digits":
            _CACHE[key] = load_digits()
        elif name in ("cifar10", "cifar100"):
            _CACHE[key] = load_cifar(name, data_dir, download)
        else:
            _CACHE[key] = load_imagefolder(data_dir)
    return _CACHE[key]
