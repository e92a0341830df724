"""Optuna studies over the spec grammar: sample a spec, check it cheaply, train, record.

- single objective: TPE (or random) with a median or Hyperband pruner on per-epoch top-1;
- several objectives: NSGA-II (or TPE, which handles several); Optuna has no pruner there;
- constraints go to the sampler (``constraints_func``): a spec over the GMACs/params budget
  is recorded as infeasible with the objective's worst value and never trained; an invalid
  spec (e.g. a patch size that does not tile the image) fails with its reason, untrained;
- storage defaults to SQLite under ``results/search/``; the same command resumes the study.
  A heartbeat marks a trial whose process died as failed, and it is retried once;
- one configuration is trained once per study, whatever the workers, processes or resumes
  (:mod:`archbench.search.claims`): a trial drawing a finished one reuses its result.
"""
from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import torch

from archbench.search import claims
from archbench.search.space import SearchSpace, apply, space_inputs, space_recipe
from archbench.errors import UsageError

def check_satisfiable(space: SearchSpace, base_spec, samples: int = 48, seed: int = 0) -> None:
    """Refuse a budget that no sampled configuration meets, naming the closest one found.

    Random configurations of the space are built and measured (params exactly; GMACs by
    fvcore on one image) — cheap next to training, and done once before the study starts."""
    if not space.constraints:
        return
    import random

    from archbench.builder import build_model, make_spec
    from archbench.measure import count_macs

    rng = random.Random(seed)
    closest, closest_excess = None, math.inf
    for _ in range(samples):
        values = {}
        for p in space.params:
            if p.kind == "categorical":
                values[p.name] = rng.choice(p.choices)
            elif p.kind == "int":
                values[p.name] = rng.randint(int(p.low), int(p.high))
            else:
                values[p.name] = rng.uniform(float(p.low), float(p.high))
        try:
            spec = make_spec(**apply(space, values, base_spec))
        except ValueError:
            continue
        model = build_model(spec)
        params = sum(x.numel() for x in model.parameters())
        excess = max(0.0, params / space.constraints.get("max_params", math.inf) - 1)
        if "max_gmacs" in space.constraints:
            gmacs = count_macs(model, (1, spec.in_chans, *spec.img_size)).gmacs
            excess = max(excess, gmacs / space.constraints["max_gmacs"] - 1)
        if excess <= 0:
            return
        if excess < closest_excess:
            closest, closest_excess = values, excess
    if closest is None:
        raise UsageError(f"{space.source}: none of {samples} sampled configurations makes a valid spec")
    raise UsageError(f"{space.source}: constraints {space.constraints} look unsatisfiable: none of {samples} "
                     f"sampled configurations meets them; the closest ({closest}) is {closest_excess:.0%} over")


def default_storage(space: SearchSpace, results_dir: str | Path = "results/search") -> str:
    path = Path(results_dir) / f"{space.name}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


# Optuna 5 records constraints on the trial and renamed the stale-trial hook; older ones
# take a constraints_func and failed_trial_callback
TRIAL_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


def retry_once(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Heartbeat hook for a trial whose process stopped (killed, machine lost): queue its
    configuration once more, so it resumes from its checkpoint when there is one. Replaces
    Optuna's deprecated ``RetryFailedTrialCallback``."""
    retries = trial.user_attrs.get("retries", 0)
    if retries < 1:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries + 1})


def quiet_optuna() -> None:
    """Optuna's log lines and its experimental/deprecation notices about its own options say
    nothing to a user of ours: errors only."""
    import warnings

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def _storage(url: str):
    import inspect

    from optuna.storages import RDBStorage

    quiet_optuna()
    hook = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback"
            in inspect.signature(RDBStorage.__init__).parameters else "failed_trial_callback")
    # SQLite serialises writers: wait for the lock (workers and processes share one file) rather
    # than fail at sqlite3's 5 s default
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    last = None
    for attempt in range(6):
        try:
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=10, grace_period=30,
                              **{hook: retry_once})
        except Exception as e:  # noqa: BLE001 - a creation race is retried, any other failure is the URL's
            last = e
            if not any(m in str(e) for m in ("already exists", "locked", "UNIQUE constraint failed")):
                break
            # two processes creating one new database race on its tables (or on the schema-version
            # row Optuna's migration inserts after them): the loser retries
            time.sleep(0.2 * (attempt + 1))
    raise UsageError(f"cannot open storage {url!r}: {type(last).__name__}: {str(last).splitlines()[0][:200]}") from None


def _sampler(space: SearchSpace, offset: int = 0):
    """The space's sampler; ``offset`` > 0 reseeds it (another worker, a resumed study), so that
    it does not replay the draws the study already has."""
    seed = space.sampler.get("seed", 0) + offset
    name = space.sampler["name"]

    def constraints(trial: optuna.trial.FrozenTrial):
        return trial.user_attrs.get("constraint", [0.0])

    kw = {} if TRIAL_CONSTRAINTS else {"constraints_func": constraints}
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed, **kw)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, **kw)


def _pruner(space: SearchSpace):
    name = space.pruner["name"]
    if name in ("none", "pareto") or len(space.objectives) > 1:  # pareto: ours, in the objective (halving.py)
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=space.recipe.get("epochs", 30))
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def open_study(space: SearchSpace, storage: str | None = None, study_name: str | None = None,
               worker: int = 0) -> optuna.Study:
    """Create or load the study (safe when several processes start it at once). The sampler is
    seeded from the space, offset by ``worker`` and by the trials the study already holds."""
    store = _storage(storage or default_storage(space))
    name = study_name or space.name
    for attempt in range(6):
        try:
            study = optuna.create_study(study_name=name, storage=store, sampler=_sampler(space),
                                        pruner=_pruner(space), directions=space.directions, load_if_exists=True)
            break
        except optuna.exceptions.DuplicatedStudyError:  # created by a racing process between check and insert
            time.sleep(0.2 * (attempt + 1))
    else:
        study = optuna.load_study(study_name=name, storage=store, sampler=_sampler(space), pruner=_pruner(space))
    if list(study.directions) != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize"
                                  else optuna.study.StudyDirection.MINIMIZE for d in space.directions]:
        raise UsageError(f"study {name!r} in {storage} has other objectives than {space.source}'s "
                         f"{list(space.objectives)}; give another --study name")
    if study.metric_names is None:
        study.set_metric_names(list(space.objectives))
    offset = 1009 * worker + len(study.get_trials(deepcopy=False))
    if offset:
        study.sampler = _sampler(space, offset)
    return study


def _suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    out = {}
    for p in space.params:
        if p.kind == "categorical":
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
    return out


class TrialFailed(RuntimeError):
    """A trial's training failed as training can (the loss diverged): recorded, the study goes on."""


class Surplus(RuntimeError):
    """A trial asked for while racing workers filled the study: it ends untrained (FAIL, ``surplus``)."""


# what a trial may meet and the study survives; anything else is a bug and stops the search
TRIAL_FAILURES = (TrialFailed, Surplus, torch.cuda.OutOfMemoryError)


def _claim(trial: optuna.Trial, key: str, target: int):
    """Settle the trial's configuration (see :mod:`archbench.search.claims`); returns the objective
    values to report when it reuses an earlier trial's result, None when it trains."""
    d = claims.settle(trial.study, trial, key, target)
    if d.action == "train":
        return None
    if d.action == "surplus":
        trial.set_user_attr(claims.SURPLUS, True)
        trial.set_user_attr("reason", f"not needed: the study already holds its {target} configurations")
        raise Surplus(f"the study already holds its {target} configurations")
    e = d.earlier
    for k, v in e.user_attrs.items():
        if k not in ("reason", "retry_of", "retries", "worker"):
            trial.set_user_attr(k, v)
    if TRIAL_CONSTRAINTS:  # the sampler reads feasibility from these
        for k, v in e.system_attrs.items():
            if k.startswith("constraints:"):
                trial.set_constraint(k.split(":", 1)[1], v)
    trial.set_user_attr(claims.REUSED, e.number)
    note = f"same configuration as trial {e.number}"
    trial.set_user_attr("reason", f"{note}: {e.user_attrs['reason']}" if e.user_attrs.get("reason") else note)
    if e.state == optuna.trial.TrialState.PRUNED:
        raise optuna.TrialPruned(trial.user_attrs["reason"])
    if e.state == optuna.trial.TrialState.FAIL:
        raise TrialFailed(trial.user_attrs["reason"])
    return list(e.values) if len(e.values) > 1 else e.values[0]


def resolve_space(space: SearchSpace):
    """The space with its base completed from its dataset (image size, channels, classes), and
    that base as a spec. Opens the dataset (image folders are only listed)."""
    from archbench.builder import make_spec
    from archbench.train.data import load_dataset
    from archbench.train.run import DATASET_IMG_SIZE

    ds = space.dataset
    data = load_dataset(ds["name"], ds.get("data_dir"), ds.get("download", False))
    base = {"img_size": DATASET_IMG_SIZE.get(ds["name"], data.native_size), "in_chans": data.in_chans,
            "num_classes": data.num_classes, **space.base}
    space = SearchSpace(**{**space.__dict__, "base": base})
    return space, make_spec(**base)


def halving_rule(space: SearchSpace):
    """The space's Pareto-aware early stop, or None (its pruner is not ``pareto``)."""
    from archbench.search.halving import COSTS, ParetoHalving, default_rungs

    if space.pruner["name"] != "pareto":
        return None
    costs = tuple(("latency" if o == "throughput" else o) for o in space.objectives if o in COSTS or o == "throughput")
    rungs = tuple(space.pruner.get("rungs") or default_rungs(space_recipe(space).epochs))
    return ParetoHalving(tuple(dict.fromkeys(costs)), rungs, eta=space.pruner.get("eta", 3))


def make_objective(space: SearchSpace, *, device: str = "cpu", target: int = 1 << 30,
                   checkpoints: str | None = None) -> Callable[[optuna.Trial], Any]:
    """The trial function. It trains a configuration only if no other trial of the study has
    (reusing that one's result otherwise) and while the study holds fewer than ``target``
    configurations. ``checkpoints``: a root folder where each configuration's run keeps its
    checkpoint, so a trial killed mid-run and retried resumes instead of starting over."""
    from archbench.builder import build_model, make_spec
    from archbench.measure import count_macs, count_params
    from archbench.measure.speed import PeakRSS
    from archbench.train.run import run_experiment

    ds = space.dataset
    space, base_spec = resolve_space(space)  # once per process
    recipe, inputs = space_recipe(space), space_inputs(space)
    seed = space.sampler.get("seed", 0)
    cons = space.constraints
    rule = halving_rule(space)

    worker = f"{socket.gethostname()}:{os.getpid()}"

    def objective(trial: optuna.Trial):
        values = _suggest(trial, space)
        trial.set_user_attr("worker", worker)
        try:
            spec, invalid = make_spec(**apply(space, values, base_spec)), None
        except ValueError as e:
            spec, invalid = None, str(e)
        reused = _claim(trial, claims.config_key(spec and spec.to_json(), values), target)
        if reused is not None:
            return reused
        if invalid is not None:
            trial.set_user_attr("reason", f"invalid spec: {invalid}")
            raise optuna.TrialPruned(f"invalid spec: {invalid}")
        model = build_model(spec)
        params = count_params(model).total
        shape = (1, spec.in_chans, *spec.img_size)
        gmacs = count_macs(model, shape).gmacs
        trial.set_user_attr("spec", spec.to_json())
        trial.set_user_attr("params", params)
        trial.set_user_attr("gmacs", gmacs)
        try:  # the second counter, as in every profile row; a failure there is recorded, not fatal
            trial.set_user_attr("gmacs_ptflops", count_macs(model, shape, backend="ptflops").gmacs)
        except Exception as e:  # noqa: BLE001
            trial.set_user_attr("ptflops_error", f"{type(e).__name__}: {e}"[:300])
        violation = {}  # > 0: over budget (Optuna's convention)
        if "max_gmacs" in cons:
            violation["max_gmacs"] = gmacs - cons["max_gmacs"]
        if "max_params" in cons:
            violation["max_params"] = float(params - cons["max_params"])
        trial.set_user_attr("constraint", list(violation.values()) or [0.0])
        if TRIAL_CONSTRAINTS:
            for key, v in violation.items():
                trial.set_constraint(key, v)
        violation = list(violation.values())
        if any(v > 0 for v in violation):  # cheap check first: never train an over-budget spec
            trial.set_user_attr("reason", "over budget: " + ", ".join(
                f"{k}={v:.4g}" for k, v in (("gmacs", gmacs), ("params", params))))
            trial.set_user_attr("trained", False)
            # feasible-looking values are never reported for it: accuracy 0, speed 0, sizes as measured
            untrained = {"top1": 0.0, "top5": 0.0, "throughput": 0.0, "gmacs": gmacs, "params": float(params),
                         "latency": 1e9}
            out = [untrained[o] for o in space.objectives]
            return out if len(out) > 1 else out[0]

        def report(epoch: int, m: dict) -> None:
            if len(space.objectives) == 1 and space.objectives[0] in ("top1", "top5"):
                trial.report(m[space.objectives[0]], epoch)
                if trial.should_prune():
                    msg = f"pruned at epoch {epoch} with top-1 {m['top1']:.2f}"
                    trial.set_user_attr("reason", msg)
                    raise optuna.TrialPruned(msg)
            elif rule is not None and epoch in rule.rungs:
                from archbench.search.halving import RUNGS, STOPPED

                rungs = {**trial.user_attrs.get(RUNGS, {}), str(epoch): m["top1"]}
                trial.set_user_attr(RUNGS, rungs)  # where the other trials read it
                stop = rule.should_stop(trial.study.get_trials(deepcopy=False), trial.number, costs, epoch, m["top1"])
                if stop is not None:
                    trial.set_user_attr(STOPPED, {"rung": stop.rung, "top1": stop.top1, "rule": stop.rule,
                                                  "compared": list(stop.compared)})
                    trial.set_user_attr("reason", stop.reason)
                    raise optuna.TrialPruned(stop.reason)

        costs = {"gmacs": gmacs, "params": float(params)}
        if rule is not None and "latency" in rule.costs:  # a cost the rule needs before training: measure it now
            from archbench.measure.speed import measure_speed

            speed = measure_speed(build_model(spec), (spec.in_chans, *spec.img_size), batch_size=recipe.eval_batch_size,
                                  device=device, warmup=2, repeats=5, train=False)
            costs["latency"] = 1e3 / speed.throughput  # ms per image, as the latency objective
            trial.set_user_attr("latency", costs["latency"])
        t0 = time.perf_counter()
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        with PeakRSS() as rss:  # training's peak memory: CUDA max allocated, or CPU RSS growth
            ckpt = None
            if checkpoints:  # one folder per configuration: a retried trial of it resumes there
                ckpt = str(Path(checkpoints) / hashlib.sha1(spec.to_json(sort_keys=True).encode()).hexdigest()[:16])
            row = run_experiment(spec, dataset=ds["name"], data_dir=ds.get("data_dir"), recipe=recipe,
                                 seed=seed, device=device, callback=report, limit_train=ds.get("limit_train"),
                                 limit_test=ds.get("limit_test"), inputs=inputs, checkpoint_dir=ckpt)
        peak = torch.cuda.max_memory_allocated(device) if cuda else rss.peak - rss.baseline
        trial.set_user_attr("peak_mem_mb", peak / 2 ** 20)
        trial.set_user_attr("trained", True)
        trial.set_user_attr("provenance", {k: row[k] for k in ("device", "torch", "timm", "git_commit", "timestamp",
                                                               "threads", "native_kernels") if k in row})
        if row["status"] != "ok":
            trial.set_user_attr("reason", row["error"])
            trial.set_user_attr(claims.FAILED_IN_TRAINING, True)
            raise TrialFailed(row["error"])
        for k in ("top1", "top5", "throughput", "train_throughput", "train_seconds"):
            trial.set_user_attr(k, row[k])
        trial.set_user_attr("history", [{k: e[k] for k in ("epoch", "loss", "top1", "top5")} for e in row["history"]])
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        metrics = {"top1": row["top1"], "top5": row["top5"], "throughput": row["throughput"], "gmacs": gmacs,
                   "params": float(params), "latency": 1e3 / row["throughput"] if row["throughput"] else math.inf}
        out = [metrics[o] for o in space.objectives]
        return out if len(out) > 1 else out[0]

    return objective
