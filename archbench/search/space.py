"""Search-space files: what a study samples, under which constraints, for which objectives.

A space is YAML (see ``search_spaces/README.md`` for the schema)::

    name: tiny
    base: {mixer: shift, ffn: mlp, dims: 16, depths: 1}      # shorthand, as the CLI flags
    params:
      patch_size: {choices: [1, 2]}                          # categorical
      depths: {low: 1, high: 2}                              # int, every stage
      "depths[2]": {low: 2, high: 6}                         # int, one stage
      mlp_ratio: {low: 1.0, high: 4.0, step: 1.0}            # float
      mixer_options.ratio: {low: 0.04, high: 0.25, log: true}
    constraints: {max_gmacs: 0.05, max_params: 2000000}
    objectives: [top1, gmacs]                                # top1/top5/throughput ↑, gmacs/params/latency ↓
    dataset: {name: digits}
    recipe: {epochs: 3, batch_size: 128}
    sampler: {name: tpe, seed: 0}
    pruner: {name: median}

Validated when loaded: errors name the key (and the YAML line) and what is allowed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from archbench.errors import UsageError

OBJECTIVES = {"top1": "maximize", "top5": "maximize", "throughput": "maximize", "gmacs": "minimize",
              "params": "minimize", "latency": "minimize"}
SAMPLERS = ("tpe", "nsgaii", "random")
PRUNERS = ("median", "hyperband", "pareto", "none")  # pareto: several objectives (search/halving.py)
CONSTRAINTS = ("max_gmacs", "max_params", "min_throughput")
TOP_KEYS = ("name", "base", "params", "constraints", "objectives", "dataset", "recipe", "sampler", "pruner")
# shorthand keys a parameter may set (all stages, or one with [i]); plus option and spec-field paths
STAGE_KEYS = ("depths", "dims", "heads", "mlp_ratio", "mixer", "ffn")
GLOBAL_KEYS = ("patch_size", "drop_path", "norm", "act", "layer_scale", "drop_rate")
PARAM_RE = re.compile(r"^(?:(?P<stage>depths|dims|heads|mlp_ratio|mixer|ffn)(?:\[(?P<idx>\d+)\])?"
                      r"|(?P<opt>mixer_options|ffn_options)\.(?P<optname>\w+)"
                      r"|(?P<glob>patch_size|drop_path|norm|act|layer_scale|drop_rate))$")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # categorical | int | float
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False


@dataclass(frozen=True)
class SearchSpace:
    name: str
    base: dict[str, Any]
    params: tuple[Param, ...]
    objectives: tuple[str, ...] = ("top1",)
    constraints: dict[str, float] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=lambda: {"name": "digits"})
    recipe: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    source: str = ""

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]


class _LineLoader(yaml.SafeLoader):
    """Records the line of every mapping key, for error messages."""


def _construct_mapping(loader, node, deep=False):
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
    lines = {loader.construct_object(k, deep=deep): k.start_mark.line + 1 for k, _ in node.value}
    mapping = _Lined(mapping)
    mapping.lines = lines
    return mapping


class _Lined(dict):
    lines: dict


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _where(src: str, d: Any, key: str) -> str:
    line = getattr(d, "lines", {}).get(key)
    return f"{src}:{line}: " if line else f"{src}: "


def _param(src: str, params: dict, name: str) -> Param:
    at = _where(src, params, name)
    if not PARAM_RE.match(str(name)):
        raise UsageError(f"{at}unknown parameter {name!r}; allowed: {', '.join(STAGE_KEYS)} (all stages, or one "
                         f"as depths[2]), mixer_options.NAME, ffn_options.NAME, {', '.join(GLOBAL_KEYS)}")
    d = params[name]
    if not isinstance(d, dict):
        raise UsageError(f"{at}parameter {name!r} needs a mapping like {{choices: [...]}} or {{low: 1, high: 4}}")
    unknown = set(d) - {"choices", "low", "high", "step", "log"}
    if unknown:
        raise UsageError(f"{at}parameter {name!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                         "allowed: choices | low, high, step, log")
    if "choices" in d:
        ch = d["choices"]
        if not isinstance(ch, list) or not ch:
            raise UsageError(f"{at}parameter {name!r}: choices must be a non-empty list, got {ch!r}")
        return Param(name, "categorical", choices=tuple(ch))
    if "low" not in d or "high" not in d:
        raise UsageError(f"{at}parameter {name!r} needs choices, or low and high")
    low, high = d["low"], d["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise UsageError(f"{at}parameter {name!r}: low and high must be numbers, got {low!r}, {high!r}")
    if low > high:
        raise UsageError(f"{at}parameter {name!r}: empty range, low={low} > high={high}")
    log = bool(d.get("log", False))
    if log and low <= 0:
        raise UsageError(f"{at}parameter {name!r}: a log range needs low > 0, got {low}")
    kind = "int" if isinstance(low, int) and isinstance(high, int) and not isinstance(d.get("step"), float) else "float"
    return Param(name, kind, low=low, high=high, step=d.get("step"), log=log)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space file."""
    path = Path(path)
    src = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"cannot read search space {src!r}: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UsageError(f"{src}{line}: malformed YAML: {getattr(e, 'problem', None) or e}") from None
    return parse_space(data, src, default_name=path.stem)


def parse_space(data: Any, src: str = "<space>", default_name: str = "study") -> SearchSpace:
    if not isinstance(data, dict):
        raise UsageError(f"{src}: a search space is a mapping with keys {', '.join(TOP_KEYS)}")
    for key in data:
        if key not in TOP_KEYS:
            raise UsageError(f"{_where(src, data, key)}unknown key {key!r}; allowed: {', '.join(TOP_KEYS)}")
    params = data.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise UsageError(f"{src}: params must map at least one parameter to its range")
    plist = tuple(_param(src, params, n) for n in params)
    objectives = data.get("objectives", ["top1"])
    objectives = [objectives] if isinstance(objectives, str) else objectives
    if not objectives or any(o not in OBJECTIVES for o in objectives) or len(set(objectives)) != len(objectives):
        raise UsageError(f"{_where(src, data, 'objectives')}objectives {objectives!r}: give distinct names "
                         f"from {', '.join(OBJECTIVES)}")
    constraints = dict(data.get("constraints") or {})
    for k, v in constraints.items():
        if k not in CONSTRAINTS:
            raise UsageError(f"{_where(src, data, 'constraints')}unknown constraint {k!r}; allowed: {', '.join(CONSTRAINTS)}")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
            raise UsageError(f"{_where(src, data, 'constraints')}constraint {k} must be a positive number, got {v!r}")
    sampler = dict(data.get("sampler") or {"name": "tpe"})
    sampler.setdefault("name", "tpe")
    sampler.setdefault("seed", 0)
    if sampler["name"] not in SAMPLERS:
        raise UsageError(f"{_where(src, data, 'sampler')}unknown sampler {sampler['name']!r}; allowed: {', '.join(SAMPLERS)}")
    several = len(objectives) > 1
    pruner = dict(data.get("pruner") or {})
    # several objectives: Optuna's pruners refuse them; ours stops trials cheaper ones beat
    pruner.setdefault("name", "pareto" if several and "top1" in objectives else "median" if not several else "none")
    at = _where(src, data, "pruner")
    if pruner["name"] not in PRUNERS:
        raise UsageError(f"{at}unknown pruner {pruner['name']!r}; allowed: {', '.join(PRUNERS)}")
    if several and pruner["name"] in ("median", "hyperband"):
        raise UsageError(f"{at}pruner {pruner['name']!r} needs one objective (Optuna prunes no multi-objective "
                         f"study); with {objectives} use pareto or none")
    if pruner["name"] == "pareto":
        from archbench.search.halving import COSTS

        if not several or "top1" not in objectives or not any(
                o in COSTS or o == "throughput" for o in objectives):
            raise UsageError(f"{at}pruner pareto needs top1 and a cost objective (gmacs, params, latency or "
                             f"throughput), got {objectives}")
        unknown = set(pruner) - {"name", "eta", "rungs"}
        if unknown:
            raise UsageError(f"{at}pruner pareto: unknown key(s) {', '.join(sorted(unknown))}; allowed: eta, rungs")
        eta = pruner.get("eta", 3)
        if not isinstance(eta, int) or isinstance(eta, bool) or eta < 2:
            raise UsageError(f"{at}pruner pareto: eta must be an integer >= 2, got {eta!r}")
        rungs = pruner.get("rungs")
        if rungs is not None and (not isinstance(rungs, list) or not rungs or any(
                not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rungs)):
            raise UsageError(f"{at}pruner pareto: rungs must be a list of epochs >= 1, got {rungs!r}")
    dataset = dict(data.get("dataset") or {"name": "digits"})
    base = dict(data.get("base") or {})
    recipe = dict(data.get("recipe") or {})
    space = SearchSpace(str(data.get("name") or default_name), base, plist, tuple(objectives), constraints,
                        dataset, recipe, sampler, pruner, src)
    check_base(space)
    return space


def check_base(space: SearchSpace) -> None:
    """The base must make a valid spec on its own (each sampled spec is checked again)."""
    from archbench.builder import make_spec

    try:
        base_spec = make_spec(**space.base)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{space.source}: base: {e}") from None
    check_names(space, base_spec)
    try:
        space_recipe(space)
        space_inputs(space)
    except ValueError as e:
        raise UsageError(f"{space.source}: {e}") from None


# what a misspelt name (a part, a norm, an option) makes the spec say; other refusals (a patch
# size that does not tile this image size...) may depend on the other values drawn with it
NAME_ERROR = re.compile(r"unknown|has no option|must be one of|allowed:|known:")


def check_names(space: SearchSpace, base_spec) -> None:
    """Each value a parameter can take, put alone into the base, names things that exist:
    a typo in ``choices`` is refused at load, not met as pruned trials counted toward --trials."""
    from archbench.builder import make_spec

    for p in space.params:
        for value in (p.choices if p.kind == "categorical" else (p.low, p.high)):
            try:
                make_spec(**apply(space, {p.name: value}, base_spec))
            except (TypeError, ValueError) as e:
                if NAME_ERROR.search(str(e)):
                    raise UsageError(f"{space.source}: parameter {p.name!r}, value {value!r}: {e}") from None


def space_recipe(space: SearchSpace):
    """The trials' recipe: the preset ``recipe.name`` (default small) with the other fields put in."""
    from archbench.train.recipe import recipe

    fields = dict(space.recipe)
    try:
        return recipe(fields.pop("name", "small"), **fields)
    except ValueError as e:
        raise UsageError(f"recipe: {e}") from None


def space_inputs(space: SearchSpace):
    """How the trials read images: ``dataset`` keys cache, cache_gb, workers (image folders)."""
    from archbench.train.inputs import Inputs

    inputs = Inputs(**{k: space.dataset[k] for k in ("cache", "cache_gb", "workers") if k in space.dataset})
    try:
        inputs.check()
    except ValueError as e:
        raise UsageError(f"dataset: {e}") from None
    return inputs


STAGE_FIELD = {"depths": "depth", "dims": "dim", "heads": "heads", "mlp_ratio": "mlp_ratio", "mixer": "mixer",
               "ffn": "ffn"}


def apply(space: SearchSpace, values: dict[str, Any], base_spec) -> dict[str, Any]:
    """Base shorthand with the sampled values put in (``base_spec``: the base, resolved)."""
    kw = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in space.base.items()}
    for name, value in values.items():
        put_param(kw, name, value, base_spec)
    return kw


def put_param(kw: dict[str, Any], name: str, value: Any, base_spec) -> None:
    """Put one parameter (a :data:`PARAM_RE` name) into shorthand ``kw``; a one-stage value
    (``depths[2]``) starts from ``kw``'s list, else from ``base_spec``'s per-stage values."""
    n_stages = len(base_spec.stages)
    m = PARAM_RE.match(name)
    if m["stage"]:
        key = m["stage"]
        if m["idx"] is None:
            kw[key] = value
            return
        cur = kw.get(key)
        if cur is None:  # not in the base: start from the resolved base's per-stage values
            cur = [getattr(st, STAGE_FIELD[key]) for st in base_spec.stages]
        cur = list(cur) if isinstance(cur, (list, tuple)) else [cur] * n_stages
        i = int(m["idx"])
        if i >= n_stages:
            raise UsageError(f"parameter {name!r}: the base has {n_stages} stages")
        cur[i] = value
        kw[key] = cur
    elif m["opt"]:
        kw[m["opt"]] = {**(kw.get(m["opt"]) or {}), m["optname"]: value}
    else:
        kw[m["glob"]] = value
