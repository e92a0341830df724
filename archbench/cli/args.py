"""Flag-value parsers and the argument groups shared by the commands, and the helpers that
turn parsed flags into a spec, a recipe and a dataset."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from archbench.errors import UsageError
from archbench.registry import FFNS, MACROS, MIXERS
from archbench.results import check_writable

def _value(text: str) -> Any:
    """A flag value: YAML scalars/lists (``0.1``, ``true``, ``[1, 3]``) and fractions (``1/12``)."""
    from archbench.ablate.factors import parse_value

    return parse_value(text)


def _ints(flag: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            vals = tuple(int(t) for t in re.split(r"[,\s]+", text.strip()) if t)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes integers like 2,2,6,2, got {text!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"{flag} is empty")
        return vals
    return parse


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(_value(t)) for t in text.split(",") if t.strip())
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"--mlp-ratio takes numbers like 4 or 4,4,2,2, got {text!r}") from None


def _img_size(text: str) -> int | tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:[x,](\d+))?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"--img-size takes N or HxW (e.g. 32 or 32x48), got {text!r}")
    if int(m[1]) < 1 or (m[2] is not None and int(m[2]) < 1):  # 0 is a size, not "unset"
        raise argparse.ArgumentTypeError(f"must be at least 1 pixel a side, got {text!r}")
    return int(m[1]) if m[2] is None else (int(m[1]), int(m[2]))


def _count(minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (a count or a size; 0 is a value, never "unset"),
    refused at parse time in one line naming the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its own messages
    return parse


def device_problem(text: str, *, present: bool = True) -> str | None:
    """Why ``text`` cannot be used as a device here (None if it can): a bad name, or (``present``)
    no GPU / no such GPU on this machine."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        return f"unknown device {text!r}; use cpu, cuda or cuda:N"
    if dev.type not in ("cpu", "cuda"):
        return f"device {text!r} is not supported; use cpu, cuda or cuda:N"
    if dev.type == "cuda" and present:
        if not torch.cuda.is_available():
            why = "" if torch.version.cuda else ", which was built without CUDA"
            return f"device {text!r}: no CUDA GPU is visible to torch {torch.__version__}{why}; use --device cpu"
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            return f"device {text!r}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
    return None


def _device(text: str) -> str:
    """--device: a device this machine has."""
    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _device_name(text: str) -> str:
    """--device where the device is only needed for some uses (a report of GPU runs on a laptop)."""
    problem = device_problem(text, present=False)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _pairs(items: list[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = _value(val)
    return out


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (a zoo name, a spec file, or the spec flags)")
    g.add_argument("--model", help="a published model from the zoo (see `archbench models`)")
    g.add_argument("--spec", type=Path, help="a spec file (YAML or JSON) as printed by `archbench spec`")
    from archbench.grammar import load_parts

    load_parts()  # the names from the registries, so a part added by one file is listed here too
    g.add_argument("--macro", help=f"{' | '.join(MACROS.names())} (default: the mixer's home)")
    g.add_argument("--mixer", type=_names, help=f"token mixer, or one per stage: {', '.join(MIXERS.names())}")
    g.add_argument("--ffn", type=_names, help=f"FFN, or one per stage: {', '.join(FFNS.names())}")
    g.add_argument("--depths", type=_ints("--depths"), help="blocks per stage, e.g. 2,2,6,2")
    g.add_argument("--dims", type=_ints("--dims"), help="width per stage, e.g. 96,192,384,768")
    g.add_argument("--heads", type=_ints("--heads"), help="attention heads per stage")
    g.add_argument("--mlp-ratio", type=_floats, help="FFN expansion, one or per stage")
    g.add_argument("--patch-size", type=_count(1), help="stem stride (patch size)")
    g.add_argument("--img-size", type=_img_size, help="N or HxW")
    g.add_argument("--in-chans", type=_count(1))
    g.add_argument("--num-classes", type=_count(0), help="0: no head (the model returns pooled features)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any other spec field, e.g. norm=batchnorm act=relu drop_path=0.1")
    g.add_argument("--mixer-opt", action="append", metavar="KEY=VALUE", help="token-mixer option, e.g. ratio=1/24")
    g.add_argument("--ffn-opt", action="append", metavar="KEY=VALUE", help="FFN option")
    g.add_argument("--macro-opt", action="append", metavar="KEY=VALUE", help="macro option, e.g. downsample=conv")


# recipe flag → Recipe field; every field of the chosen --recipe can be overridden
RECIPE_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "weight_decay": "weight_decay",
                "warmup": "warmup_epochs", "label_smoothing": "label_smoothing", "clip_grad": "clip_grad",
                "lr_base_batch": "lr_base_batch", "warmup_lr": "warmup_lr", "min_lr": "min_lr",
                "transform": "transform", "interpolation": "interpolation", "rand_augment": "rand_augment",
                "color_jitter": "color_jitter", "reprob": "reprob", "crop_pct": "crop_pct", "mixup": "mixup",
                "cutmix": "cutmix", "drop_path": "drop_path", "ema": "ema_decay", "accum_steps": "accum_steps"}


def add_train_args(r: argparse.ArgumentParser) -> None:
    """Dataset, input pipeline and recipe flags, shared by run, ablate and study."""
    from archbench.train.recipe import INTERPOLATIONS, PRESETS, TRANSFORMS

    d = r.add_argument_group("data")
    d.add_argument("--dataset", default="digits", help="digits (embedded, default) | cifar10 | cifar100 | imagefolder")
    d.add_argument("--data-dir", help="dataset root (cifar*: torchvision's folder; imagefolder: train/ + val/)")
    d.add_argument("--download", action="store_true", help="let torchvision download cifar10/cifar100 to --data-dir")
    d.add_argument("--limit-train", type=int, help="train on a class-balanced subset of this many images")
    d.add_argument("--limit-test", type=int, help="evaluate on a class-balanced subset of this many images")
    d.add_argument("--cache", default="auto", choices=("auto", "memory", "disk"),
                   help="image folders: decode into memory at the model's resolution, or stream from disk; "
                        "auto: memory when the decoded train split fits in --cache-gb (default)")
    d.add_argument("--cache-gb", type=float, default=4.0, help="memory budget of --cache auto, in GB (default 4)")
    d.add_argument("--workers", type=int, default=2, help="data-loading worker processes per rank (default 2)")
    g = r.add_argument_group("recipe (each flag overrides the --recipe preset's value)")
    g.add_argument("--recipe", default="small", choices=tuple(PRESETS),
                   help="small: small images in memory (default); deit: the DeiT recipe (Mixup, CutMix, "
                        "RandAugment, random erasing, 300 epochs); shiftvit: Swin's settings as ShiftViT uses them")
    g.add_argument("--epochs", type=int, help="default: the recipe's (small: 15 on digits, 30 elsewhere)")
    g.add_argument("--batch-size", type=int, help="global batch, all ranks together (small: 64, deit: 1024)")
    g.add_argument("--lr", type=float, help="peak learning rate (deit/shiftvit: per 512 images, scaled by the batch)")
    g.add_argument("--lr-base-batch", type=int, help="scale lr by batch / this (0: lr is absolute)")
    g.add_argument("--warmup-lr", type=float, help="lr at the start of warm-up (scaled like --lr)")
    g.add_argument("--min-lr", type=float, help="lr at the end of the cosine (scaled like --lr)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup", type=float, help="warm-up epochs")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--clip-grad", type=float, help="max gradient norm (0: off)")
    g.add_argument("--accum-steps", type=_count(1), metavar="K",
                   help="split each rank's batch into K forward/backward passes per optimiser step (gradient "
                        "accumulation): the recipe's --batch-size on fewer GPUs or less memory")
    g.add_argument("--transform", choices=TRANSFORMS, help="tensor: batched pad-crop + flip (small); "
                                                           "timm: per-image timm transforms (deit)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS)
    g.add_argument("--rand-augment", help="timm RandAugment string, e.g. rand-m9-mstd0.5-inc1 ('' = off)")
    g.add_argument("--color-jitter", type=float)
    g.add_argument("--reprob", type=float, help="random erasing probability")
    g.add_argument("--crop-pct", type=float, help="evaluation centre-crop fraction")
    g.add_argument("--mixup", type=float, help="Mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, help="CutMix alpha (0: off)")
    g.add_argument("--drop-path", type=float, help="stochastic depth rate (default: the recipe's, else the model's)")
    g.add_argument("--ema", type=float, metavar="DECAY", help="keep an EMA of the weights with this decay, e.g. 0.99996")
    g.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    g.add_argument("--checkpoint-dir", help="save the run's state here each epoch; the same command resumes it "
                                            "(run: a SIGTERM or SIGUSR1 then stops it at a step, saved there)")
    g.add_argument("--checkpoint-every", type=_count(1), metavar="STEPS",
                   help="with --checkpoint-dir: also save every STEPS optimiser steps inside an epoch (a kill "
                        "then loses at most that many; resuming continues inside the epoch, exactly)")


SHORTHAND_FLAGS = ("macro", "mixer", "ffn", "depths", "dims", "heads", "mlp_ratio", "patch_size",
                   "img_size", "in_chans", "num_classes")


def spec_from_args(args: argparse.Namespace):
    """The spec the model flags ask for (validated; errors are ValueErrors)."""
    from archbench.builder import make_spec
    from archbench.spec import ArchSpec

    shorthand = {k: getattr(args, k) for k in SHORTHAND_FLAGS if getattr(args, k) is not None}
    fields = _pairs(args.set, "--set")
    mixer_opts = _pairs(args.mixer_opt, "--mixer-opt")
    ffn_opts = _pairs(args.ffn_opt, "--ffn-opt")
    macro_opts = _pairs(args.macro_opt, "--macro-opt")
    if args.spec is not None:
        if shorthand or fields or mixer_opts or ffn_opts or macro_opts or args.model:
            raise UsageError("--spec takes the whole spec from the file; give no other model flags")
        try:
            text = args.spec.read_text()
        except OSError as e:
            raise UsageError(f"cannot read spec file {str(args.spec)!r}: {e.strerror}") from None
        data = yaml.safe_load(text)
        return ArchSpec.from_dict(data)
    if args.model:
        from archbench.models import get_entry, override_spec

        entry = get_entry(args.model)
        if "macro" in shorthand:
            raise UsageError(f"--macro cannot change {entry.name}'s macro-architecture ({entry.make().macro}); "
                             "use the spec flags without --model for another macro")
        changes = {**shorthand, **fields}
        if macro_opts:
            changes["options"] = {**entry.make().options.as_dict(), **macro_opts}
        if mixer_opts:
            changes["mixer_options"] = mixer_opts
        if ffn_opts:
            changes["ffn_options"] = ffn_opts
        try:
            return override_spec(entry.make(), **changes) if changes else entry.make()
        except ValueError as e:
            raise UsageError(f"{entry.name}: {e}") from None
    return make_spec(**shorthand_from_args(args))


def shorthand_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The spec flags (no --model/--spec) as the builder's shorthand dict."""
    kw = {k: getattr(args, k) for k in SHORTHAND_FLAGS if getattr(args, k) is not None}
    kw.update(_pairs(args.set, "--set"))
    for flag, key in (("mixer_opt", "mixer_options"), ("ffn_opt", "ffn_options"), ("macro_opt", "options")):
        opts = _pairs(getattr(args, flag), f"--{flag.replace('_', '-')}")
        if opts:
            kw[key] = opts
    return kw


def model_from_args(args, holds: str = "forward-backward", device: str = "cpu"):
    """(model, name) for the model flags: a zoo model keeps its name and preprocessing. A model
    whose weights (``holds`` copies of them) would not fit in ``device``'s free memory is refused
    before it is built (:func:`archbench.measure.memory.check_fits`)."""
    from archbench.builder import build_model
    from archbench.measure.memory import check_fits

    spec = spec_from_args(args)
    check_fits(spec, holds=holds, device=device)
    model = build_model(spec)
    if args.model:
        from archbench.models import get_entry
        entry = get_entry(args.model)
        model.pretrained_cfg.update(entry.cfg)
        model.zoo_name = entry.name
        return model, entry.name
    return model, None


def recipe_overrides(args) -> dict[str, Any]:
    """The recipe fields the flags set explicitly."""
    out = {field: getattr(args, flag) for flag, field in RECIPE_FLAGS.items() if getattr(args, flag, None) is not None}
    if getattr(args, "no_augment", False):
        out["augment"] = False
    return out


def recipe_from_args(args, base: dict[str, Any] | None = None):
    """The training recipe the flags ask for: the --recipe preset, then ``base`` (e.g. a study
    profile's fields), then the flags given (the small recipe's epochs depend on the dataset)."""
    from archbench.train.recipe import recipe
    from archbench.train.run import DATASET_EPOCHS, DEFAULT_EPOCHS

    fields = {**(base or {}), **recipe_overrides(args)}
    if args.recipe == "small" and "epochs" not in fields:
        fields["epochs"] = DATASET_EPOCHS.get(args.dataset, DEFAULT_EPOCHS)
    r = recipe(args.recipe, **fields)
    args.epochs = r.epochs
    return r


def add_parallel_args(p: argparse.ArgumentParser) -> None:
    """How the runs of ablate and study are executed (with --jobs, --cache, --checkpoint-dir)."""
    p.add_argument("--nproc-per-run", type=int, default=1,
                   help="train each run as a torchrun job of N processes (data-parallel: N GPUs per run on "
                        "CUDA, N gloo processes on a CPU); --jobs of them at once")


def execution_from_args(args, batch_size: int):
    """The ablation's :class:`~archbench.ablate.plan.Execution` from the flags (checked, also that
    the recipe's global batch splits over --nproc-per-run ranks)."""
    from dataclasses import asdict

    from archbench.ablate.plan import Execution
    from archbench.train.batches import per_rank
    from archbench.train.dist import Dist

    if args.nproc_per_run < 1:
        raise UsageError(f"--nproc-per-run must be >= 1, got {args.nproc_per_run}")
    per_rank(batch_size, Dist(world_size=args.nproc_per_run))
    if args.checkpoint_dir:
        check_writable(Path(args.checkpoint_dir), "--checkpoint-dir")
    return Execution(inputs=asdict(inputs_from_args(args)), checkpoints=args.checkpoint_dir,
                     nproc_per_run=args.nproc_per_run, checkpoint_every=checkpoint_every_from_args(args))


def checkpoint_every_from_args(args) -> int:
    """--checkpoint-every, which needs --checkpoint-dir (0 when not given)."""
    every = getattr(args, "checkpoint_every", None)
    if every and not args.checkpoint_dir:
        raise UsageError(f"--checkpoint-every {every} needs --checkpoint-dir (where to save)")
    return every or 0


def inputs_from_args(args):
    """How the run reads its images (--cache, --cache-gb, --workers)."""
    from archbench.train.inputs import Inputs

    inputs = Inputs(cache=args.cache, cache_gb=args.cache_gb, workers=args.workers)
    inputs.check()
    return inputs


def note(line: str) -> None:
    """A one-line note on stdout (rank 0 only, under torchrun)."""
    import os

    if os.environ.get("RANK", "0") == "0":
        print(f"note: {line}", flush=True)


def data_into_args(args, say: Callable[[str], None] = note):
    """Load the dataset; its input size, channels and classes fill the model flags left open
    (an input size the model cannot take becomes the nearest one it can: :func:`fit_img_size`).
    ``say`` gets the dataset's notes and the size chosen, a line each."""
    from archbench.train.data import load_dataset
    from archbench.train.run import DATASET_IMG_SIZE

    data = load_dataset(args.dataset, args.data_dir, args.download)
    for line in getattr(data, "notes", ()):
        say(line)
    if args.spec is None:  # the dataset fills in what the flags leave open
        fill = args.model is None and args.img_size is None
        if fill:
            args.img_size = DATASET_IMG_SIZE.get(args.dataset, data.native_size)
        if args.in_chans is None:
            args.in_chans = data.in_chans
        if args.num_classes is None:
            args.num_classes = data.num_classes
        if fill:
            fit_img_size(args, data.name, say)
    return data


def fit_img_size(args, what: str, say: Callable[[str], None]) -> None:
    """``args.img_size`` (the data's size, not the user's) → the nearest size the model flags'
    model takes, when it cannot take the data's (e.g. 28 px under a pyramid of total stride 32):
    said in one line. Left as it is when no size near it fits (the spec's own error follows)."""
    from archbench.builder import make_spec

    size = args.img_size
    h, w = (size, size) if isinstance(size, int) else size
    try:
        make_spec(**shorthand_from_args(args))
        return
    except UsageError as e:
        why = str(e).split(";")[0]  # what does not fit, without the spec error's own advice
    for cand in _nearby_sizes(h, w):
        args.img_size = cand[0] if cand[0] == cand[1] else cand
        try:
            make_spec(**shorthand_from_args(args))
        except UsageError:
            continue
        say(f"{what}'s {h}x{w} images do not fit this model ({why}): training at {cand[0]}x{cand[1]}, the "
            "nearest size it takes (the images are resized); --img-size sets another")
        return
    args.img_size = size


def _nearby_sizes(h: int, w: int, strides: int = 128) -> list[tuple[int, int]]:
    """(h, w) rounded to the nearest multiple of 1, 2, ... ``strides`` (ties upwards), nearest
    first (a tie: the larger first): where any tiling stride's nearest valid size is."""
    def near(n: int, k: int) -> int:
        return max(k, (n + k // 2) // k * k)
    cands = {(near(h, k), near(w, k)) for k in range(1, strides + 1)} - {(h, w)}
    return sorted(cands, key=lambda c: (abs(c[0] - h) + abs(c[1] - w), -c[0] - c[1]))
