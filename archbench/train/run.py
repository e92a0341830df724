"""One training run end to end: data, model, training, evaluation, a results row."""
from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Callable

import torch

from archbench.builder import build_model
from archbench.errors import UsageError
from archbench.spec import ArchSpec
from archbench.train.checkpoint import Checkpointer
from archbench.train.data import load_dataset
from archbench.train.dist import Dist
from archbench.train.folder import BadImages
from archbench.train.inputs import Inputs, make_batches
from archbench.train.loop import Diverged, Recipe, train

# the input size a dataset's images are brought to when the model flags don't say
# (digits: the 8x8 images upsampled 2x), and the epochs when --epochs doesn't say
DATASET_IMG_SIZE = {"digits": 16, "cifar10": 32, "cifar100": 32}
DATASET_EPOCHS = {"digits": 15}
DEFAULT_EPOCHS = 30


def run_identity(spec: ArchSpec, *, dataset: str, recipe: Recipe, seed: int, device: str, world_size: int,
                 limit_train: int | None, limit_test: int | None, pretrained: dict | None = None) -> dict[str, Any]:
    """What makes two runs the same run (a checkpoint of another identity is refused)."""
    from archbench.ablate.plan import numerics

    ident = {"spec": spec.to_dict(), "recipe": recipe.as_dict(), "dataset": dataset, "limit_train": limit_train,
             "limit_test": limit_test, "seed": seed, "numerics": numerics(device), "world_size": world_size}
    if pretrained is not None:  # only then: the identities of runs from scratch stay as they were
        ident["pretrained"] = pretrained
    return ident


def pretrained_identity(path: str) -> dict[str, str]:
    """The starting weights of a fine-tuning run: the file's name and the start of its SHA-256
    (another file under the same name is another run)."""
    import hashlib

    from archbench.models.weights import checkpoint_file

    file = checkpoint_file(path)  # a run's --checkpoint-dir means its last.pt; a missing file is one line
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return {"file": file.name, "sha256": digest.hexdigest()[:16]}


def run_experiment(spec: ArchSpec, *, dataset: str = "digits", data_dir: str | None = None, download: bool = False,
                   recipe: Recipe = Recipe(), seed: int = 0, device: str = "cpu",
                   callback: Callable[[int, dict], None] | None = None,
                   on_step: Callable[[int, int, float], None] | None = None, name: str | None = None,
                   limit_train: int | None = None, limit_test: int | None = None, inputs: Inputs = Inputs(),
                   checkpoint_dir: str | None = None, checkpoint_every: int = 0, ctx: Dist = Dist(),
                   say: Callable[[str], None] | None = None, pretrained: str | None = None,
                   compile: bool = False, stop: Callable[[], str | None] | None = None) -> dict[str, Any]:
    """Train ``spec`` on ``dataset`` and return the results row (``status`` ok or failed).

    The spec must already fit the data (see :func:`fit_spec_to_data`). With
    ``checkpoint_dir``, the run saves its state there at each epoch end (and every
    ``checkpoint_every`` optimiser steps inside one) and continues from it when called again; a
    finished run returns its row without training. ``pretrained``: start from these weights (a
    fine-tuning run; a zoo model ``name``'s checkpoint in its reference code's keys is converted,
    a classifier of another size is replaced, position embeddings are resized). ``compile``:
    train through ``torch.compile`` (not part of the run's identity: a resumed run may differ).
    ``stop``: see :func:`archbench.train.loop.train` (a stop signal ends the run, checkpointed). ``say``
    receives one-line notes (the cache chosen, a resume, skipped images)."""
    from archbench.measure import count_macs, count_params
    from archbench.results import provenance

    recipe.check()
    inputs.check()
    say = say or (lambda line: None)
    t_start = time.perf_counter()
    if recipe.drop_path is not None and recipe.drop_path != spec.drop_path:
        spec = spec.replace(drop_path=recipe.drop_path)
    start_from = pretrained_identity(pretrained) if pretrained else None
    ckpt = None
    if checkpoint_dir:
        ckpt = Checkpointer(checkpoint_dir, every=checkpoint_every, identity=run_identity(
            spec, dataset=dataset, recipe=recipe, seed=seed, device=device, world_size=ctx.world_size,
            limit_train=limit_train, limit_test=limit_test, pretrained=start_from))
        ckpt.check_writable()
        done = ckpt.finished_row()
        if done is not None:
            say(f"this run finished before in {checkpoint_dir}: its row, no training")
            return done
    data = load_dataset(dataset, data_dir, download).subset(limit_train, limit_test)
    torch.manual_seed(seed)
    model = build_model(spec)  # seeded: a fine-tuning run's new classifier too
    if pretrained:
        from archbench.models.factory import get_entry
        from archbench.models.weights import load_pretrained

        try:  # a zoo model's entry converts its reference code's keys
            entry = get_entry(name) if name else None
        except UsageError:
            entry = None
        load_pretrained(model, pretrained, entry)
    row: dict[str, Any] = {
        "name": name or f"{spec.macro} {'+'.join(dict.fromkeys(s.mixer for s in spec.stages))}"
                        f"/{'+'.join(dict.fromkeys(s.ffn for s in spec.stages))}",
        "dataset": data.name, "train_images": data.n_train, "test_images": data.n_test, "seed": seed,
        "recipe": {**recipe.as_dict(), "limit_train": limit_train, "limit_test": limit_test}, "macro": spec.macro,
        "mixers": sorted({s.mixer for s in spec.stages}), "ffns": sorted({s.ffn for s in spec.stages}),
        "params": count_params(model).total,
    }
    try:
        row["gmacs_fvcore"] = count_macs(model, (1, spec.in_chans, *spec.img_size)).gmacs
    except Exception as e:  # noqa: BLE001 - a counter failure must not cost the run
        row["gmacs_fvcore"], row["fvcore_error"] = None, f"{type(e).__name__}: {e}"[:300]
    dev = torch.device(device)
    bad = BadImages()  # unreadable images, met decoding into memory or streaming: named in the row
    batches, chosen = make_batches(data, spec.img_size, recipe, inputs, seed=seed, device=dev, ctx=ctx, say=say,
                                   bad=bad)
    row["inputs"] = {**asdict(inputs), **chosen}
    status, error = "ok", None
    hist = None
    try:
        hist = train(model, batches, recipe, num_classes=spec.num_classes, seed=seed, device=dev, ctx=ctx, say=say,
                     compile=compile, stop=stop,
                     checkpoint=ckpt, callback=callback, on_step=on_step)
    except Diverged as e:
        status, error = "failed", str(e)
    skipped = bad.summary()
    if skipped:
        say(skipped)
    last = hist.last if hist else {}
    row.update({
        "status": status, "error": error, "top1": last.get("top1"), "top5": last.get("top5"),
        "best_top1": max((m["top1"] for m in hist.epochs), default=None) if hist else None,
        "throughput": last.get("eval_throughput"),
        "train_throughput": (hist.train_images / hist.train_seconds) if hist and hist.train_seconds else None,
        "train_seconds": hist.train_seconds if hist else None, "wall_seconds": time.perf_counter() - t_start,
        "epochs_done": len(hist.epochs) if hist else 0, "history": hist.epochs if hist else [],
        "device": device, "spec": spec.to_json(), "world_size": ctx.world_size,
        "resumed_from_epoch": hist.resumed_from if hist else 0, "skipped_images": skipped,
        "pretrained": f"{pretrained} (sha256 {start_from['sha256']})" if pretrained else None,
        "compile": compile,
    })
    if "ema_top1" in last:
        row.update(ema_top1=last["ema_top1"], ema_top5=last["ema_top5"])
    from archbench.measure.speed import device_name
    row["device"] = device_name(dev)
    row.update(provenance(threads=torch.get_num_threads()))
    if ckpt is not None and ctx.main and status == "ok":
        ckpt.save_row(row)
    return row


def fit_spec_to_data(spec: ArchSpec, dataset: str, data_dir: str | None, download: bool,
                     explicit: set[str]) -> ArchSpec:
    """The dataset's channels and classes (and, unless given, its input size) into the spec."""
    data = load_dataset(dataset, data_dir, download)
    changes: dict[str, Any] = {}
    if "in_chans" not in explicit and spec.in_chans != data.in_chans:
        changes["in_chans"] = data.in_chans
    if "num_classes" not in explicit and spec.num_classes != data.num_classes:
        changes["num_classes"] = data.num_classes
    if changes:
        spec = spec.replace(**changes)
    return spec
