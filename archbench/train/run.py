"""One training run end to end: data, model, training, evaluation, a results row."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from archbench.builder import build_model
from archbench.spec import ArchSpec
from archbench.train.data import load_dataset
from archbench.train.loop import Diverged, Recipe, train

# the input size a dataset's images are brought to when the model flags don't say
# (digits: the 8x8 images upsampled 2x), and the epochs when --epochs doesn't say
DATASET_IMG_SIZE = {"digits": 16, "cifar10": 32, "cifar100": 32}
DATASET_EPOCHS = {"digits": 15}
DEFAULT_EPOCHS = 30


def run_experiment(spec: ArchSpec, *, dataset: str = "digits", data_dir: str | None = None, download: bool = False,
                   recipe: Recipe = Recipe(), seed: int = 0, device: str = "cpu",
                   callback: Callable[[int, dict], None] | None = None,
                   on_step: Callable[[int, int, float], None] | None = None, name: str | None = None,
                   limit_train: int | None = None, limit_test: int | None = None) -> dict[str, Any]:
    """Train ``spec`` on ``dataset`` and return the results row (``status`` ok or failed).

    The spec must already fit the data (see :func:`fit_spec_to_data`)."""
    from archbench.measure import count_macs, count_params
    from archbench.results import provenance

    recipe.check()
    t_start = time.perf_counter()
    data = load_dataset(dataset, data_dir, download).subset(limit_train, limit_test).resized(spec.img_size)
    torch.manual_seed(seed)
    model = build_model(spec)
    row: dict[str, Any] = {
        "name": name or f"{spec.macro} {'+'.join(dict.fromkeys(s.mixer for s in spec.stages))}"
                        f"/{'+'.join(dict.fromkeys(s.ffn for s in spec.stages))}",
        "dataset": data.name, "train_images": len(data.train.y), "test_images": len(data.test.y),
        "seed": seed, "recipe": {**recipe.as_dict(), "limit_train": limit_train, "limit_test": limit_test}, "macro": spec.macro,
        "mixers": sorted({s.mixer for s in spec.stages}), "ffns": sorted({s.ffn for s in spec.stages}),
        "params": count_params(model).total,
    }
    try:
        row["gmacs_fvcore"] = count_macs(model, (1, spec.in_chans, *spec.img_size)).gmacs
    except Exception as e:  # noqa: BLE001 - a counter failure must not cost the run
        row["gmacs_fvcore"], row["fvcore_error"] = None, f"{type(e).__name__}: {e}"[:300]
    status, error = "ok", None
    hist = None
    try:
        hist = train(model, data, recipe, seed=seed, device=device, callback=callback, on_step=on_step)
    except Diverged as e:
        status, error = "failed", str(e)
    last = hist.last if hist else {}
    row.update({
        "status": status, "error": error, "top1": last.get("top1"), "top5": last.get("top5"),
        "best_top1": max((m["top1"] for m in hist.epochs), default=None) if hist else None,
        "throughput": last.get("eval_throughput"),
        "train_throughput": (hist.train_images / hist.train_seconds) if hist and hist.train_seconds else None,
        "train_seconds": hist.train_seconds if hist else None, "wall_seconds": time.perf_counter() - t_start,
        "epochs_done": len(hist.epochs) if hist else 0, "history": hist.epochs if hist else [],
        "device": device, "spec": spec.to_json(),
    })
    from archbench.measure.speed import device_name
    row["device"] = device_name(torch.device(device))
    row.update(provenance(threads=torch.get_num_threads()))
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
