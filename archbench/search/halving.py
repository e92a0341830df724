"""Pareto-aware successive halving: stop a multi-objective trial early when cheaper trials
already beat it at the same epoch.

In an architecture search the cost objectives (GMACs, parameters, measured latency) are known
before training; only accuracy is learned. At a rung (epoch 1, 2, 4, …) a trial is compared
with its *peers*: the other trials, finished or still running past that rung, that cost no
more than it in every cost objective. It stops when

- **rank**: at least η peers reached the rung and its accuracy there is below the top 1/η of
  theirs (ASHA's promotion rule, restricted to trials no more costly), or
- **front**: a finished peer's final accuracy exceeds its rung accuracy by more than the
  largest gain finished trials made from that rung to the end (their 90th percentile once
  there are ten) — so even a trial learning as fast as any seen could not pass that peer.

A trial no peer is cheaper than is never stopped: it may be the front's cheap end. Optuna
refuses ``Trial.report`` in multi-objective studies, so rung accuracies live in the trial's
user attributes (``rungs``: epoch → top-1), where every worker on the storage reads them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import optuna

RUNGS = "rungs"  # user attribute: {"1": top1, "2": top1, ...} (JSON keys are strings)
STOPPED = "stopped"  # user attribute: the decision's record
COSTS = ("gmacs", "params", "latency")  # lower is cheaper; known before training


def default_rungs(epochs: int) -> tuple[int, ...]:
    """1, 2, 4, … below the last epoch (the last epoch is the end, not a rung)."""
    out, e = [], 1
    while e < epochs:
        out.append(e)
        e *= 2
    return tuple(out)


@dataclass(frozen=True)
class Stop:
    rung: int
    top1: float
    rule: str  # rank | front
    compared: tuple[int, ...]  # the peers' trial numbers
    reason: str


def _costs(ua: dict, names) -> tuple[float, ...] | None:
    vals = tuple(ua.get(n) for n in names)
    return None if any(v is None for v in vals) else tuple(float(v) for v in vals)


class ParetoHalving:
    """The stopping rule; ``should_stop`` is called by a trial after each epoch's evaluation."""

    def __init__(self, costs: tuple[str, ...], rungs: tuple[int, ...], eta: int = 3, min_finished: int = 3):
        if not costs:
            raise ValueError("Pareto halving needs at least one cost objective (gmacs, params, latency)")
        self.costs, self.rungs, self.eta, self.min_finished = tuple(costs), tuple(rungs), eta, min_finished

    def gain(self, finished, rung: int) -> float | None:
        """How far finished trials' top-1 moved from ``rung`` to their end: the largest (the 90th
        percentile once there are ten); None until ``min_finished`` of them passed the rung."""
        gains = sorted(t.user_attrs["top1"] - t.user_attrs[RUNGS][str(rung)] for t in finished
                       if str(rung) in (t.user_attrs.get(RUNGS) or {}))
        if len(gains) < self.min_finished:
            return None
        if len(gains) >= 10:
            return gains[min(len(gains) - 1, math.ceil(0.9 * len(gains)) - 1)]
        return gains[-1]

    def should_stop(self, trials, number: int, costs: dict, epoch: int, top1: float) -> Stop | None:
        """Decide for trial ``number`` (its ``costs`` by name) at ``epoch`` with ``top1``,
        given the study's ``trials`` (FrozenTrials)."""
        if epoch not in self.rungs:
            return None
        mine = tuple(float(costs[c]) for c in self.costs)
        peers = []
        for t in trials:
            if t.number == number or t.user_attrs.get("reused_from") is not None:
                continue
            c = _costs(t.user_attrs, self.costs)
            if c is None or any(a > b for a, b in zip(c, mine)):
                continue  # more costly in some objective: not a peer
            peers.append(t)
        if not peers:
            return None
        at_rung = [(t.user_attrs[RUNGS][str(epoch)], t.number) for t in peers
                   if str(epoch) in (t.user_attrs.get(RUNGS) or {})]
        if len(at_rung) >= self.eta:
            ranked = sorted(at_rung, reverse=True)
            keep = ranked[:math.ceil(len(ranked) / self.eta)]
            bar = keep[-1][0]
            if top1 < bar:
                return Stop(epoch, top1, "rank", tuple(n for _, n in ranked),
                            f"stopped at epoch {epoch}: top-1 {top1:.2f} is below the top 1/{self.eta} (≥ {bar:.2f}) "
                            f"of the {len(ranked)} trials no more costly at that epoch "
                            f"(#{', #'.join(str(n) for _, n in keep)} kept)")
        finished = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("trained")
                    and t.user_attrs.get("top1") is not None and t.user_attrs.get("reused_from") is None]
        gain = self.gain(finished, epoch)
        if gain is None:
            return None
        peer_numbers = {t.number for t in peers}
        beaten = [t for t in finished if t.number in peer_numbers and t.user_attrs["top1"] > top1 + max(gain, 0.0)]
        if beaten:
            best = max(beaten, key=lambda t: t.user_attrs["top1"])
            return Stop(epoch, top1, "front", tuple(t.number for t in beaten),
                        f"stopped at epoch {epoch}: top-1 {top1:.2f} plus the gain finished trials made after "
                        f"that epoch (up to +{gain:.2f}) stays below trial #{best.number}'s final "
                        f"{best.user_attrs['top1']:.2f}, at no more {'/'.join(self.costs)}")
        return None
