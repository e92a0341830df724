"""Run a study to its target: worker processes sharing its storage, one per GPU when there are
several, which stop when the study holds ``--trials`` distinct configurations (or the space has
no more) and die with the command that started them."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna

from archbench.search import claims

# a worker whose sampler keeps drawing configurations the study already has stops after this
# many in a row (the space is small or the sampler has converged); each such draw costs no training
MAX_REPEATS = 50


def worker_devices(device: str, workers: int) -> list[str]:
    """Worker i's device: ``cuda:i`` (mod the GPU count) when ``device`` is cuda and there are several."""
    gpus = 0
    if device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    return [f"cuda:{i % gpus}" if gpus > 1 else device for i in range(workers)]


def worker_threads(device: str, workers: int) -> int | None:
    """PyTorch threads for each of ``workers`` CPU workers: the cores shared out
    (:func:`~archbench.train.job.threads_per_process`); None (PyTorch's default) for GPU workers."""
    from archbench.train.job import threads_per_process

    return threads_per_process(workers) if device.startswith("cpu") else None


def _die_with_parent(parent: int) -> None:
    """End this process when ``parent`` ends, even by SIGKILL: the kernel's parent-death signal on
    Linux, and a watchdog thread everywhere (and for a parent gone before the signal was set)."""
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="archbench-parent-watch").start()


def worker(space_path: str, storage: str, study_name: str, target: int, index: int, device: str,
           deadline: float | None = None, checkpoints: str | None = None, size: int | None = None,
           parent: int | None = None, threads: int | None = None) -> None:
    """One worker: trials one at a time until the study holds ``target`` configurations, the space
    (``size`` configurations) is exhausted, the sampler only repeats itself, or ``deadline``
    (time.time()) has passed — checked before starting a trial, never in the middle of one.
    ``threads``: PyTorch's intra-op threads in this process (:func:`worker_threads`)."""
    if parent is not None:
        _die_with_parent(parent)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from archbench.search.space import load_space
    from archbench.search.study import TRIAL_FAILURES, make_objective, open_study

    space = load_space(space_path)
    study = open_study(space, storage, study_name, worker=index)
    objective = make_objective(space, device=device, target=target, checkpoints=checkpoints)
    repeats = 0
    while True:
        distinct = claims.distinct_finished(study.get_trials(deepcopy=False))
        if distinct >= target or (size is not None and distinct >= size):
            return
        if deadline is not None and time.time() >= deadline:
            return
        ran: list[optuna.trial.FrozenTrial] = []
        study.optimize(objective, n_trials=1, catch=TRIAL_FAILURES, callbacks=[lambda s, t: ran.append(t)])
        last = ran[-1]
        if last.user_attrs.get(claims.SURPLUS):
            return
        repeats = repeats + 1 if claims.REUSED in last.user_attrs else 0
        if repeats >= MAX_REPEATS:
            study.set_user_attr("stopped", f"worker {index}'s sampler drew {repeats} configurations in a row that "
                                           f"the study already had; stopped with {distinct} distinct")
            return


@dataclass
class Outcome:
    """What a search command ran to: counts over the whole study, and why it stopped short."""
    study: str
    storage: str
    trials: int = 0
    distinct: int = 0
    complete: int = 0
    trained: int = 0
    pruned: int = 0
    failed: int = 0
    reused: int = 0
    stopped_at: dict[int, int] = field(default_factory=dict)  # early-stopped trials per rung epoch
    trials_per_hour: float | None = None
    space_size: int | None = None
    notes: list[str] = field(default_factory=list)
    worker_exit_codes: list[int] = field(default_factory=list)


def summarize(study: optuna.Study, storage: str, target: int, size: int | None) -> Outcome:
    ts = study.get_trials(deepcopy=False)
    own = [t for t in ts if not t.user_attrs.get(claims.SURPLUS)]
    out = Outcome(study.study_name, storage, trials=len(own), distinct=claims.distinct_finished(ts),
                  complete=sum(t.state == optuna.trial.TrialState.COMPLETE for t in own),
                  trained=sum(t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("trained", False)
                              and claims.REUSED not in t.user_attrs for t in own),
                  pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in own),
                  failed=sum(t.state == optuna.trial.TrialState.FAIL for t in own),
                  reused=sum(claims.REUSED in t.user_attrs for t in own), space_size=size)
    for t in own:
        if t.user_attrs.get("stopped") and claims.REUSED not in t.user_attrs:
            rung = t.user_attrs["stopped"]["rung"]
            out.stopped_at[rung] = out.stopped_at.get(rung, 0) + 1
    spans = [(t.datetime_start, t.datetime_complete) for t in own if t.datetime_start and t.datetime_complete]
    if spans:
        hours = (max(e for _, e in spans) - min(s for s, _ in spans)).total_seconds() / 3600
        out.trials_per_hour = len(spans) / hours if hours > 0 else None
    if out.distinct < target and size is not None and out.distinct >= size:
        out.notes.append(f"space exhausted: it holds {size} distinct configurations and all are done "
                         f"(asked for {target}); {out.reused} draws reused earlier results")
    elif out.distinct < target and study.user_attrs.get("stopped"):
        out.notes.append(study.user_attrs["stopped"])
    return out


def run_search(space_path: str | Path, *, trials: int, storage: str, study_name: str, workers: int = 1,
               device: str = "cpu", timeout: float | None = None, checkpoints: str | None = None,
               on_progress: Callable[[int], None] | None = None, resolved=None) -> Outcome:
    """Bring the study to ``trials`` distinct finished configurations with ``workers`` processes.

    The caller has validated the space and opened the study once (so a bad storage URL fails
    before any worker starts). ``timeout``: seconds after which no new trial starts. ``resolved``: the
    space and base spec :func:`~archbench.search.study.resolve_space` gave, when the caller has them."""
    import multiprocessing as mp

    from archbench.search.claims import space_size
    from archbench.search.space import load_space
    from archbench.search.study import open_study, resolve_space

    space, base_spec = resolved or resolve_space(load_space(space_path))
    size = space_size(space, base_spec)
    study = open_study(space, storage, study_name)
    deadline = time.time() + timeout if timeout else None
    procs = []
    if claims.distinct_finished(study.get_trials(deepcopy=False)) < min(trials, size or trials):
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=worker, args=(str(space_path), storage, study_name, trials, i, dev, deadline,
                                                  checkpoints, size, os.getpid(), worker_threads(dev, workers)))
                 for i, dev in enumerate(worker_devices(device, workers))]
    try:
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            if on_progress:
                on_progress(claims.distinct_finished(study.get_trials(deepcopy=False)))
            for p in procs:
                p.join(timeout=1.0 / len(procs))
    finally:  # interrupted: the workers go with us (their trials are failed by the heartbeat)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    out = summarize(study, storage, trials, size)
    out.worker_exit_codes = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    return out
