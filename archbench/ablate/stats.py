"""Statistics of an ablation: per-arm mean ± std over seeds, the paired difference of an arm
to the base arm (same seeds: same initialisation seed, same data order) with a Student-t
confidence interval over the per-seed differences, and the power of that paired t-test:
the minimum detectable difference (MDE) and the seeds needed to detect a difference or to
narrow the interval to a width, all from the observed spread of the per-seed differences."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence
from archbench.errors import UsageError


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); nan for n < 2


@dataclass(frozen=True)
class Paired:
    """``arm - base`` over the seeds both have."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided paired t-test; nan for n < 2 or zero spread with zero mean
    seeds: tuple

    def covers_zero(self) -> bool:
        return self.ci_low <= 0.0 <= self.ci_high


def summarize(values: Sequence[float]) -> Summary:
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Summary(0, math.nan, math.nan)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else math.nan
    return Summary(n, mean, std)


def t_quantile(q: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def paired_diff(base: Mapping[int, float], arm: Mapping[int, float], conf: float = 0.95) -> Paired:
    """Paired difference ``arm - base`` over the seeds in both, with a ``conf`` t-interval."""
    if not 0 < conf < 1:
        raise UsageError(f"confidence must be in (0, 1), got {conf!r}")
    seeds = tuple(sorted(set(base) & set(arm)))
    diffs = [float(arm[s]) - float(base[s]) for s in seeds]
    s = summarize(diffs)
    if s.n < 2:
        return Paired(s.n, s.mean, s.std, math.nan, math.nan, math.nan, seeds)
    half = t_quantile(0.5 + conf / 2, s.n - 1) * s.std / math.sqrt(s.n)
    if s.std == 0:
        p = 1.0 if s.mean == 0 else 0.0
    else:
        from scipy import stats

        tstat = s.mean / (s.std / math.sqrt(s.n))
        p = float(2 * stats.t.sf(abs(tstat), s.n - 1))
    return Paired(s.n, s.mean, s.std, s.mean - half, s.mean + half, p, seeds)


POWER = 0.8  # the conventional target power of the MDE and the seed counts


def t_power(effect: float, n: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired (one-sample) t-test at level ``alpha`` with ``n`` pairs when
    the true difference is ``effect`` SDs of the differences: P(|T| > t_crit), T ~ noncentral t
    with n - 1 degrees of freedom and noncentrality effect * sqrt(n)."""
    from scipy import stats

    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    nc = abs(effect) * math.sqrt(n)
    # lower tail as sf at -nc (symmetry): scipy's nct.cdf returns nan far out in that tail
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def mde(n: int, sd: float, alpha: float = 0.05, power: float = POWER) -> float:
    """Minimum detectable difference: the smallest |Δ| that a two-sided paired t-test at level
    ``alpha`` with ``n`` pairs detects with probability ``power``, when the per-pair differences
    have SD ``sd`` (nan for n < 2). Root of the noncentral-t power in the effect size, times sd."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    from scipy.optimize import brentq

    hi = 1.0
    while t_power(hi, n, alpha) < power:
        hi *= 2
    return float(brentq(lambda d: t_power(d, n, alpha) - power, 0.0, hi, xtol=1e-10)) * sd


def _smallest_n(ok, cap: int) -> float:
    """Smallest integer n >= 2 with ``ok(n)`` (``ok`` monotone in n); inf if none up to ``cap``."""
    hi = 2
    while not ok(hi):
        if hi >= cap:
            return math.inf
        hi = min(2 * hi, cap)
    lo = max(2, hi // 2)
    if ok(lo):
        return float(lo)
    while hi - lo > 1:  # ok(hi), not ok(lo)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return float(hi)


def seeds_for_power(diff: float, sd: float, alpha: float = 0.05, power: float = POWER,
                    cap: int = 10**6) -> float:
    """Seeds (pairs) a two-sided paired t-test needs to detect a true difference ``diff`` with
    probability ``power`` when the differences have SD ``sd``: nan if either is unknown, inf for
    a zero difference (or beyond ``cap``)."""
    if not (math.isfinite(diff) and math.isfinite(sd)):
        return math.nan
    if diff == 0:
        return math.inf
    if sd == 0:
        return 2.0
    return _smallest_n(lambda n: t_power(diff / sd, n, alpha) >= power, cap)


def seeds_for_width(sd: float, width: float, conf: float = 0.95, cap: int = 10**6) -> float:
    """Seeds whose ``conf`` t-interval of the mean difference is at most ``width`` wide (full width,
    2 t s / sqrt(n)) if the differences keep the SD ``sd``; nan if sd is unknown."""
    if not math.isfinite(sd):
        return math.nan
    return _smallest_n(lambda n: 2 * t_quantile(0.5 + conf / 2, n - 1) * sd / math.sqrt(n) <= width, cap)
