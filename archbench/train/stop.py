"""A run told to stop by its scheduler: SIGTERM (what a cluster sends before it kills a
preempted or timed-out job) or SIGUSR1 (SLURM's ``--signal=USR1@N`` warning).

While :func:`stop_signals` is active, those signals only set a flag; the training loop reads it
at the steps where it checks the loss (each step on a CPU, every 25 on a GPU), saves a
checkpoint at that step (all ranks agreeing on the step
under torchrun) and raises :class:`Stopped`, so the same command resumes exactly there instead
of losing the epoch. DataLoader workers ignore the signals (:func:`ignore_in_worker`): the main
process owns the shutdown, and a worker killed first would otherwise end the run mid-step.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

SIGNALS = ("SIGTERM", "SIGUSR1")


class Stopped(Exception):
    """Raised by the training loop after it saved its state on a stop signal."""

    def __init__(self, signal_name: str, epoch: int, step: int, steps: int):
        super().__init__(f"stopped by {signal_name} in epoch {epoch}, after its step {step} of {steps}")
        # the shell's code for a process ended by that signal (SIGTERM's where another rank got it)
        self.exit_code = 128 + getattr(signal, signal_name, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals() -> Iterator[Callable[[], str | None]]:
    """Catch the stop signals while the block runs; yields a function giving the name of the
    first one received (None before any). Outside the main thread, signals cannot be caught:
    the function then always gives None."""
    got: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    sigs = [getattr(signal, name) for name in SIGNALS if hasattr(signal, name)]

    def handler(signum, frame):
        got.append(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield lambda: got[0] if got else None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def ignore_in_worker(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: the stop signals leave the worker running."""
    for name in SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
