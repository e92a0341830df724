"""An ablation's plan: the arms (the base model with factor values put in, optionally
budget-matched) and what every arm is trained with (dataset, recipe, seeds)."""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from archbench.ablate.budget import BudgetError, Cost, Match, match_budget, measure, shape
from archbench.ablate.factors import Factor, apply_changes
from archbench.spec import ArchSpec
from archbench.train.loop import Recipe
from archbench.errors import UsageError

DESIGNS = ("cross", "oat")  # every combination | one factor at a time from the base arm


@dataclass
class Arm:
    """One configuration of the ablation. ``changes``: factor name → value (the labels as typed)."""

    id: str
    changes: dict[str, Any]
    labels: dict[str, str]
    spec: ArchSpec
    cost: Cost
    match: Match | None = None
    is_base: bool = False

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps(canonical_spec(self.spec), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Execution:
    """How an ablation's runs are executed — where the images live, checkpoints, processes per
    run. Not part of a run's identity, except that a data-parallel run (``nproc_per_run`` > 1)
    is another run than a one-process one (per-rank batch norm statistics differ)."""

    inputs: dict[str, Any] = field(default_factory=dict)  # archbench.train.inputs.Inputs fields
    checkpoints: str | None = None  # root folder: one sub-folder per (arm, seed)
    nproc_per_run: int = 1  # > 1: each run is a torchrun job of this many processes
    checkpoint_every: int = 0  # also checkpoint every this many steps inside an epoch (0: epoch ends only)

    def checkpoint_dir(self, run_key: str, seed: int) -> str | None:
        return None if self.checkpoints is None else str(Path(self.checkpoints) / f"{run_key}-seed{seed}")


@dataclass
class Ablation:
    """Arms × seeds, trained with one recipe on one dataset; rows under ``out``/runs."""

    name: str
    arms: list[Arm]
    seeds: Sequence[int]
    recipe: Recipe
    dataset: dict[str, Any] = field(default_factory=lambda: {"name": "digits"})
    device: str = "cpu"
    out: str = "results/ablations/ablation"
    conf: float = 0.95
    command: str = ""
    execution: Execution = field(default_factory=Execution)

    @property
    def base(self) -> Arm:
        return next(a for a in self.arms if a.is_base)

    @property
    def numerics(self) -> str:
        return numerics(self.device)

    def run_key(self, arm: Arm) -> str:
        """Identifies a trained (arm, recipe, data, numerics) combination: a rerun skips finished
        ones, and runs under other numerics (a CPU's fp32 vs a GPU's bf16 autocast) never pair."""
        ident: dict[str, Any] = {"spec": canonical_spec(arm.spec), "recipe": self.recipe.identity(),
                                 "data": {k: v for k, v in self.dataset.items() if k != "data_dir"}}
        init = resolved_init(arm.spec)
        if init != LEGACY_INIT:
            # runs trained with archbench 0.1's init keep their keys (and pair only with each other)
            ident["init"] = init
        if self.execution.nproc_per_run > 1:
            ident["world_size"] = self.execution.nproc_per_run
        if self.numerics != GPU_NUMERICS:
            # GPU keys leave the field out: they were made before numerics joined the key, and
            # committed GPU runs must stay resumable
            ident["numerics"] = self.numerics
        return hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


GPU_NUMERICS = "bf16 autocast"
LEGACY_INIT = "archbench-0.1"  # the init every model had before the per-family schemes


def resolved_init(spec: ArchSpec) -> str:
    """The init scheme a spec is built with: its own, or its macro family's."""
    from archbench.registry import MACROS

    return spec.init or MACROS.get(spec.macro).default_init(spec)


def numerics(device: str) -> str:
    """How the training loop computes on ``device`` (see ``train.loop.train``): bf16 autocast on
    a GPU, fp32 elsewhere. Part of a run's identity: it changes the numbers."""
    return GPU_NUMERICS if str(device).startswith("cuda") else "fp32"


def canonical_spec(spec: ArchSpec) -> dict[str, Any]:
    """The spec as a dict with part options that equal the part's defaults dropped, so that
    ``shift`` and ``shift`` with ``ratio=1/12`` are one model (one key, trained once)."""
    import inspect

    from archbench.registry import FFNS, MIXERS

    d = spec.to_dict()
    d.pop("init", None)  # the run key names the resolved scheme instead (Ablation.run_key)
    for st in d["stages"]:
        for key, registry in (("mixer", MIXERS), ("ffn", FFNS)):
            params = inspect.signature(registry.get(st[key])).parameters
            opts = st[f"{key}_options"]
            for name in list(opts):
                p = params.get(name)
                if p is not None and p.default is not inspect.Parameter.empty and _same(opts[name], p.default):
                    del opts[name]
    return d


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
    return a == b


def arm_id(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items()) or "base"


def make_arms(base: dict[str, Any] | ArchSpec, factors: Sequence[Factor], *, design: str = "cross",
              match: str | None = None, adjust: str = "depth", tol: float = 0.05,
              measure_fn: Callable[[ArchSpec], Cost] = measure,
              on_arm: Callable[[str], None] | None = None) -> list[Arm]:
    """The arms: the base arm (every factor at its first value) first, then the others,
    each matched to the base arm's budget when ``match`` is ``gmacs`` or ``params``."""
    if design not in DESIGNS:
        raise UsageError(f"unknown design {design!r}; allowed: {', '.join(DESIGNS)}")
    if not factors:
        raise UsageError("nothing to vary: give at least one --vary NAME=V1,V2")
    names = [f.name for f in factors]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"factor {dup[0]!r} is given twice; put all its values in one --vary")
    if design == "cross":
        combos = list(itertools.product(*(range(len(f.values)) for f in factors)))
    else:
        combos = [tuple(0 for _ in factors)]
        for i, f in enumerate(factors):
            combos += [tuple(j if k == i else 0 for k in range(len(factors))) for j in range(1, len(f.values))]
    if len(combos) < 2:
        raise UsageError("an ablation needs at least two arms: give a factor two or more values")
    if not isinstance(base, ArchSpec):
        # fix the macro-architecture of the base arm, so that varying the mixer never moves an
        # arm to another macro (each mixer's home macro would otherwise apply)
        first = {f.name: f.values[0] for f in factors}
        base = dict(base)
        if not base.get("macro"):
            base["macro"] = apply_changes(base, first).macro
    arms: list[Arm] = []
    for combo in combos:
        changes = {f.name: f.values[j] for f, j in zip(factors, combo)}
        labels = {f.label: f.labels[j] for f, j in zip(factors, combo)}
        aid = arm_id(labels)
        try:
            spec = apply_changes(base, changes)
        except ValueError as e:
            raise UsageError(f"arm {aid}: {e}") from None
        arms.append(Arm(aid, changes, labels, spec, Cost(0, 0.0), is_base=not any(combo)))
    target = None
    for arm in arms:
        if on_arm:
            on_arm(arm.id)
        if match and not arm.is_base:
            try:
                arm.spec, arm.match = match_budget(arm.spec, target, metric=match, adjust=adjust, tol=tol,
                                                   measure_fn=measure_fn)
            except BudgetError as e:
                raise BudgetError(f"arm {arm.id}: {e}") from None
        arm.cost = arm.match.cost if arm.match else measure_fn(arm.spec)  # matching counted it already
        if arm.is_base and match:
            target = arm.cost.get(match)
            arm.match = Match(match, adjust, target, arm.cost, shape(arm.spec), shape(arm.spec))
    keys = {}
    for arm in arms:
        if arm.key in keys:
            raise UsageError(f"arms {keys[arm.key]} and {arm.id} build the same model; drop one value")
        keys[arm.key] = arm.id
    return arms
