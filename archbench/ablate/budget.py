"""Budget matching: give an arm the base arm's GMACs (or parameters) by changing its depth
(as ShiftViT did: the saved budget goes into more blocks) or its width.

Depth: a block's cost is the same for every block of a stage, so the cost is linear in the
per-stage depths; the model with one block a stage and one build per stage with a second
block give the slopes, every depth vector in a box is scored at once, and the best
candidates are built and counted exactly. Among vectors within the tolerance the one
closest to a uniform scaling of the base's depths wins (the paper's r2 models scale all
stages). Width: a bisection on one multiplier of every stage's width
(kept divisible by the stage's heads), then the neighbours, each counted exactly.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

from archbench.spec import ArchSpec
from archbench.errors import UsageError

METRICS = ("gmacs", "params")
ADJUST = ("depth", "width")


class BudgetError(UsageError):
    """No depth/width meets the budget within the tolerance (the message names the closest)."""


@dataclass(frozen=True)
class Cost:
    params: int
    gmacs: float

    def get(self, metric: str) -> float:
        return float(self.params if metric == "params" else self.gmacs)


def measure(spec: ArchSpec) -> Cost:
    """Parameters and fvcore GMACs of the built model (one image of the spec's size). Kept per
    spec for the process: a study's sections measure the same models again (their bases, the
    depth slopes), each a model build and a trace, about a second at 224 px."""
    try:
        return _measure_cached(spec)
    except TypeError:  # a spec holding something unhashable: measured every time
        return _measure(spec)


def _measure(spec: ArchSpec) -> Cost:
    import torch

    from archbench.builder import build_model
    from archbench.measure import count_macs, count_params

    # counts depend on shapes, not values: PyTorch's constructor init, not the spec's scheme
    # (timm's trunc_normal_ over every weight was a third of the build-and-count time)
    with torch.random.fork_rng(devices=[]):
        model = build_model(spec.replace(init="torch")).eval()
    return Cost(count_params(model).total, count_macs(model, (1, spec.in_chans, *spec.img_size)).gmacs)


_measure_cached = functools.lru_cache(maxsize=512)(_measure)


def shape(spec: ArchSpec) -> dict[str, list[int]]:
    """Per-stage depths and widths: what budget matching may change."""
    return {"depths": [s.depth for s in spec.stages], "dims": [s.dim for s in spec.stages]}


@dataclass
class Match:
    """How an arm was matched: what changed, and the cost it landed on (the matched model's)."""

    metric: str
    adjust: str
    target: float
    cost: Cost
    before: dict = field(default_factory=dict)  # depths/dims before
    after: dict = field(default_factory=dict)

    @property
    def value(self) -> float:
        return self.cost.get(self.metric)

    @property
    def rel_error(self) -> float:
        return (self.value - self.target) / self.target if self.target else 0.0

    def describe(self) -> str:
        key = "depths" if self.adjust == "depth" else "dims"
        b, a = self.before.get(key), self.after.get(key)
        change = f"{key} {'-'.join(map(str, b))} → {'-'.join(map(str, a))}" if b != a else f"{key} unchanged"
        return f"{change}; {self.metric} {_fmt(self.metric, self.value)} vs {_fmt(self.metric, self.target)} ({self.rel_error:+.1%})"


def _fmt(metric: str, v: float) -> str:
    return f"{v / 1e6:.3f} M" if metric == "params" else f"{v:.4f} G"


def _with_depths(spec: ArchSpec, depths) -> ArchSpec:
    return spec.replace(stages=tuple(st.replace(depth=int(d)) for st, d in zip(spec.stages, depths)))


def _with_dims(spec: ArchSpec, dims) -> ArchSpec:
    return spec.replace(stages=tuple(st.replace(dim=int(d)) for st, d in zip(spec.stages, dims)))


def match_budget(spec: ArchSpec, target: float, *, metric: str = "gmacs", adjust: str = "depth",
                 tol: float = 0.05, measure_fn: Callable[[ArchSpec], Cost] = measure,
                 max_depth_factor: float = 4.0) -> tuple[ArchSpec, Match]:
    """``spec`` changed (by depth or width) so that ``metric`` is within ``tol`` (relative) of
    ``target``; raises :class:`BudgetError` naming the closest it found otherwise."""
    if metric not in METRICS:
        raise UsageError(f"unknown budget metric {metric!r}; allowed: {', '.join(METRICS)}")
    if adjust not in ADJUST:
        raise UsageError(f"cannot match a budget by {adjust!r}; allowed: {', '.join(ADJUST)}")
    if not tol > 0:
        raise UsageError(f"the budget tolerance must be > 0, got {tol!r}")
    if not target > 0:
        raise UsageError(f"the budget to match must be > 0, got {target!r}")
    before = shape(spec)
    base_cost = measure_fn(spec)
    if abs(base_cost.get(metric) - target) <= tol * target:
        return spec, Match(metric, adjust, target, base_cost, before, before)
    fn = _by_depth if adjust == "depth" else _by_width
    best_spec, best_cost = fn(spec, target, metric, tol, measure_fn, base_cost, max_depth_factor)
    m = Match(metric, adjust, target, best_cost, before, shape(best_spec))
    if abs(m.value - target) > tol * target:
        raise BudgetError(f"no {adjust} meets {metric} {_fmt(metric, target)} within ±{tol:.1%}: the closest is "
                          f"{m.describe()}")
    return best_spec, m


def _by_depth(spec, target, metric, tol, measure_fn, base_cost: Cost, factor) -> tuple[ArchSpec, Cost]:
    depths = [s.depth for s in spec.stages]
    base = base_cost.get(metric)
    slopes = _slopes(spec, metric, measure_fn)
    if slopes is None:  # the one-block model does not build: bump the arm's own depths
        slopes = [measure_fn(_with_depths(spec, [d + (j == i) for j, d in enumerate(depths)])).get(metric) - base
                  for i in range(len(depths))]
    const = base - sum(s * d for s, d in zip(slopes, depths))
    while True:  # keep the box small enough to score exhaustively
        ranges = [range(1, max(d + 2, int(math.ceil(d * factor))) + 1) for d in depths]
        if math.prod(len(r) for r in ranges) <= 200_000 or factor <= 1.5:
            break
        factor *= 0.8
    cands = []
    for ds in itertools.product(*ranges):
        pred = const + sum(s * d for s, d in zip(slopes, ds))
        err = abs(pred - target) / target
        logs = [math.log(d / d0) for d, d0 in zip(ds, depths)]
        mean = sum(logs) / len(logs)
        shape = sum((x - mean) ** 2 for x in logs)  # distance from a uniform scaling
        cands.append((err > tol, shape if err <= tol else err, err, ds))
    cands.sort()
    best = (math.inf, spec, base_cost)
    for _, _, _, ds in cands[:8]:  # the linear prediction is exact for uniform stages; check anyway
        try:
            s = _with_depths(spec, ds)
        except ValueError:
            continue
        c = measure_fn(s)
        err = abs(c.get(metric) - target) / target
        if err <= tol:
            return s, c
        if err < best[0]:
            best = (err, s, c)
    return best[1], best[2]


def _slopes(spec, metric, measure_fn) -> list[float] | None:
    """Each stage's cost per block, from the model with one block a stage and its bumps (the
    cost is linear in the depths): models of a few blocks build and trace in a fraction of the
    time of the arm's own (at 224 px, 4 blocks against ShiftViT-T's 12 or a matched 36). None
    where a one-block stage is not a valid spec."""
    n = len(spec.stages)
    try:  # the one-block model, then each stage with a second block
        costs = [measure_fn(_with_depths(spec, [1 + (j == i) for j in range(n)])).get(metric) for i in range(-1, n)]
    except ValueError:
        return None
    return [c - costs[0] for c in costs[1:]]


def _by_width(spec, target, metric, tol, measure_fn, base_cost: Cost, _factor) -> tuple[ArchSpec, Cost]:
    dims0 = [s.dim for s in spec.stages]
    quanta = [max(1, s.heads) * (2 if s.heads == 1 else 1) for s in spec.stages]

    def at(f: float):
        dims = [max(q, int(round(d * f / q)) * q) for d, q in zip(dims0, quanta)]
        try:
            s = _with_dims(spec, dims)
        except ValueError:
            return None, None
        return s, measure_fn(s)

    lo, hi = (0.25, 1.0) if base_cost.get(metric) > target else (1.0, 4.0)
    tried = []
    for _ in range(14):
        mid = math.sqrt(lo * hi)
        s, c = at(mid)
        v = math.inf if c is None else c.get(metric)
        if s is not None:
            tried.append((abs(v - target) / target, s, c))
            if abs(v - target) <= tol * target:
                return s, c
        if v > target:
            hi = mid
        else:
            lo = mid
    if not tried:
        return spec, base_cost
    tried.sort(key=lambda t: t[0])
    return tried[0][1], tried[0][2]
