"""One configuration, one training: trials claim their configuration through the study's storage.

A trial draws values, computes its configuration's key (the spec it would train, or the
values when they make no valid spec) and records it as the user attribute ``config_key``.
Then it looks only at the trials that started before it (start time, then number: an order
every worker, process and resumed command reads alike from the storage) and decides:

- an earlier trial finished the same configuration (or its training failed, e.g. diverged —
  seeded, so it would again) → *reuse* its result (``reused_from``);
- an earlier trial is running it → wait, then reuse (or train, if that one failed);
- the earlier trials already hold the study's ``target`` configurations → *surplus*: this
  trial was asked for by a worker racing another one and ends untrained;
- otherwise → *train*.

Waiting only ever points at earlier trials, so workers cannot wait on each other in a cycle;
a trial whose process died is failed by Optuna's heartbeat check (called while waiting),
which frees its configuration.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import optuna

KEY = "config_key"
REUSED = "reused_from"
SURPLUS = "surplus"
FAILED_IN_TRAINING = "failed_in_training"  # diverged: seeded, so it would again — reused, not retried
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def config_key(spec_json: str | None, values: dict[str, Any]) -> str:
    """The identity of what a trial would train: its spec (values that make the same spec are one
    configuration); values that make no valid spec are keyed by themselves."""
    text = spec_json if spec_json is not None else "values:" + json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def key_of(t: optuna.trial.FrozenTrial) -> str | None:
    """A trial's configuration key; for a finished trial of a study made before keys were
    recorded, derived from its recorded spec (or values) as it would be now."""
    if KEY in t.user_attrs:
        return t.user_attrs[KEY]
    if t.state in FINISHED:
        return config_key(t.user_attrs.get("spec"), t.params)
    return None


def holds_slot(t: optuna.trial.FrozenTrial) -> bool:
    """A trial that counts as one of the study's configurations: finished, its own (not a reuse), not surplus."""
    return t.state in FINISHED and REUSED not in t.user_attrs and not t.user_attrs.get(SURPLUS)


def distinct_finished(trials) -> int:
    return len({key_of(t) for t in trials if holds_slot(t)})


@dataclass(frozen=True)
class Decision:
    action: str  # train | reuse | surplus
    earlier: optuna.trial.FrozenTrial | None = None


def _order(t: optuna.trial.FrozenTrial):
    return (t.datetime_start, t.number)


def decide(trials, number: int, key: str, target: int) -> Decision | None:
    """What trial ``number`` (configuration ``key``) does, given the study's trials; None: wait.

    "Earlier" is by start time, then number — a total order every process reads alike from the
    storage; by start, not number, because a retried trial is enqueued (numbered) long before it
    starts. Trials still waiting in the queue have not started and are not earlier than anyone."""
    me = next(t for t in trials if t.number == number)
    running = optuna.trial.TrialState.RUNNING
    earlier = [t for t in trials if t.datetime_start is not None and t.number != number and _order(t) < _order(me)]
    same = [t for t in earlier if key_of(t) == key and not t.user_attrs.get(SURPLUS)]
    done = [t for t in same if t.state in FINISHED or (t.state == optuna.trial.TrialState.FAIL
                                                        and t.user_attrs.get(FAILED_IN_TRAINING))]
    if done:
        return Decision("reuse", min(done, key=_order))
    if any(t.state == running for t in same):
        return None
    if any(t.state == running and KEY not in t.user_attrs for t in earlier):
        return None  # an earlier trial is between drawing and claiming: its claim comes first
    held = {key_of(t) for t in earlier if holds_slot(t) or (t.state == running and KEY in t.user_attrs
                                                             and not t.user_attrs.get(SURPLUS))}
    if len(held) < target:
        return Decision("train")
    if any(t.state == running for t in earlier):
        return None  # full, unless a running trial fails and frees its configuration
    return Decision("surplus")


def settle(study: optuna.Study, trial: optuna.Trial, key: str, target: int, poll: float = 0.5,
           sleep: Callable[[float], None] = time.sleep) -> Decision:
    """Record ``key`` on ``trial`` and wait until :func:`decide` can tell what it does."""
    trial.set_user_attr(KEY, key)
    last_stale_check = 0.0
    while True:
        d = decide(study.get_trials(deepcopy=False), trial.number, key, target)
        if d is not None:
            return d
        if time.monotonic() - last_stale_check > 5:  # a dead worker's trial must not block us forever
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            last_stale_check = time.monotonic()
        sleep(poll)


def space_size(space, base_spec, limit: int = 2000) -> int | None:
    """How many distinct configurations the space holds (None: unbounded, or over ``limit`` draws
    to enumerate). Values that build the same spec count once, as they train once."""
    from archbench.builder import make_spec
    from archbench.search.space import apply

    grids = []
    for p in space.params:
        if p.kind == "categorical":
            grids.append(list(p.choices))
        elif p.kind == "int":
            grids.append(list(range(int(p.low), int(p.high) + 1, int(p.step or 1))))
        elif p.step:
            n = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
            grids.append([p.low + i * p.step for i in range(n)])
        else:
            return None
    if math.prod(len(g) for g in grids) > limit:
        return None
    keys = set()
    for combo in itertools.product(*grids):
        values = dict(zip((p.name for p in space.params), combo))
        try:
            spec_json = make_spec(**apply(space, values, base_spec)).to_json()
        except ValueError:
            spec_json = None
        keys.add(config_key(spec_json, values))
    return len(keys)
