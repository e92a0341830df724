"""Per-run checkpoints: everything a run needs to continue exactly where it stopped.

A run's folder holds ``last.pt`` (written at each epoch end, and every N steps inside one with
``--checkpoint-every N``: write to a temporary file, then rename, so a kill never leaves half a
checkpoint), ``history.csv`` (a line per finished epoch, to follow a long run) and, once the run
has finished, ``row.json`` (its results row: rerunning a finished run returns it without
training). Each file carries the run's identity (spec, recipe, data, seed, numerics, world
size, starting weights); a folder holding another run's checkpoint is refused rather than mixed.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from archbench.results import check_writable
from archbench.errors import UsageError


class Checkpointer:
    """Saves and restores one run's training state in ``folder``."""

    def __init__(self, folder: str | Path, identity: dict[str, Any], every: int = 0):
        self.folder = Path(folder)
        self.every = every  # also every this many optimiser steps inside an epoch (0: at epoch ends only)
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))  # plain JSON types
        self.state_path = self.folder / "last.pt"
        self.row_path = self.folder / "row.json"

    def check_writable(self) -> None:
        """Fail before any training if the folder cannot hold checkpoints."""
        check_writable(self.folder, "--checkpoint-dir")

    def _check_identity(self, found: dict[str, Any], what: str) -> None:
        if found == self.identity:
            return
        changes = _differences(found, self.identity)
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise UsageError(f"{what} in {str(self.folder)!r} belongs to another run ({shown}); "
                         "use another --checkpoint-dir or remove it")

    def finished_row(self) -> dict[str, Any] | None:
        """The row of this run if it has finished here already."""
        if not self.row_path.is_file():
            return None
        saved = json.loads(self.row_path.read_text())
        self._check_identity(saved["identity"], "a finished run")
        return saved["row"]

    def load(self) -> dict[str, Any] | None:
        """The last saved training state, or None if the run has not saved one."""
        if not self.state_path.is_file():
            return None
        state = torch.load(self.state_path, map_location="cpu", weights_only=False)
        self._check_identity(state["identity"], "the checkpoint")
        return state

    def save(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save({**state, "identity": self.identity}, tmp)
        os.replace(tmp, self.state_path)

    def save_history(self, epochs: list[dict[str, Any]]) -> None:
        """``history.csv``: one line per finished epoch (loss, top-1, lr, ...), rewritten whole at
        each epoch end, so a long run can be followed (or plotted) while it trains."""
        import csv
        import io

        keys = list(dict.fromkeys(k for m in epochs for k in m))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(epochs)
        tmp = self.folder / "history.csv.tmp"
        tmp.write_text(buf.getvalue())
        os.replace(tmp, self.folder / "history.csv")

    def save_row(self, row: dict[str, Any]) -> None:
        tmp = self.row_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"identity": self.identity, "row": row}, default=str))
        os.replace(tmp, self.row_path)


def _differences(found: Any, wanted: Any, path: str = "") -> list[str]:
    """Where two identities differ, down to the leaves (``recipe.epochs: 2 here, 3 in this run``),
    so a refused folder says what to change rather than only "recipe"."""
    if isinstance(found, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(found) | set(wanted), key=str):
            if found.get(key) != wanted.get(key):
                out += _differences(found.get(key), wanted.get(key), f"{path}.{key}" if path else str(key))
        return out
    if (isinstance(found, list) and isinstance(wanted, list) and len(found) == len(wanted)
            and all(isinstance(v, dict) for v in found + wanted)):  # e.g. the spec's stages
        return [d for i, (a, b) in enumerate(zip(found, wanted)) for d in _differences(a, b, f"{path}[{i}]")]

    def short(v: Any) -> str:
        text = json.dumps(v) if v is not None else "none"
        return text if len(text) <= 40 else text[:37] + "..."

    return [f"{path}: {short(found)} here, {short(wanted)} in this run"]


def rng_state(gen: torch.Generator | None) -> dict[str, Any]:
    """Every random state a run draws from (python, numpy, torch CPU and CUDA, the loop's generator)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array as a tensor: a checkpoint of tensors and plain types loads with
    # torch.load(weights_only=True), so `archbench eval --pretrained last.pt` reads it
    return {"python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "gen": gen.get_state() if gen is not None else None}


def set_rng_state(state: dict[str, Any], gen: torch.Generator | None) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]  # keys: a tensor, or an ndarray in checkpoints before 2026-12-06
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if gen is not None and state["gen"] is not None:
        gen.set_state(state["gen"])


def run_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """A run's saved state (``last.pt``, or a --checkpoint-dir holding one), read with
    ``weights_only=True``; None where ``path`` is another kind of file (a published checkpoint).
    A path that names no file is one line (:func:`~archbench.models.weights.checkpoint_file`)."""
    from archbench.models.weights import checkpoint_file

    path = checkpoint_file(path)
    if path.suffix == ".safetensors":
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not ours (or ours from before 2026-12-06): read_checkpoint says why
        return None
    ok = isinstance(state, dict) and isinstance(state.get("identity"), dict) and "spec" in state["identity"]
    return state if ok else None


def model_from_run(state: dict[str, Any], *, ema: bool = False):
    """The model a run's checkpoint (:func:`run_checkpoint`) holds: its spec built and its weights
    (``ema``: the EMA's) loaded, with the run's own eval preprocessing in ``pretrained_cfg``
    (the recipe's crop and interpolation, ImageNet's mean and std, as the run streamed them)."""
    from archbench.builder import build_model
    from archbench.spec import ArchSpec

    ident = state["identity"]
    recipe = ident.get("recipe") or {}
    if ident.get("dataset") != "imagefolder":
        raise UsageError(f"this run trained on {ident.get('dataset')!r}, normalised by that set's own statistics; "
                         "`archbench eval` reads an image folder with ImageNet's, as runs on image folders train")
    if recipe.get("transform", "tensor") != "timm":
        raise UsageError("this run was trained with the tensor transform (the small recipe), whose evaluation "
                         "is `archbench run`'s own (a plain resize, the data's statistics); `archbench eval` "
                         "applies the timm eval transform of the deit and shiftvit recipes")
    if ema and not state.get("ema"):
        raise UsageError("--ema: this run kept no EMA of its weights (train with --ema DECAY)")
    weights = state["model"] if not ema else {k.removeprefix("module."): v for k, v in state["ema"].items()}
    model = build_model(ArchSpec.from_dict(ident["spec"]))
    model.load_state_dict(weights)
    model.pretrained_cfg.update(crop_pct=recipe["crop_pct"], interpolation=recipe["interpolation"])
    return model
