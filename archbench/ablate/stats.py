"""Statistics of an ablation: per-arm mean ± std over seeds, and the paired difference of
an arm to the base arm (same seeds: same initialisation seed, same data order) with a
Student-t confidence interval over the per-seed differences."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence


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
        raise ValueError(f"confidence must be in (0, 1), got {conf!r}")
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
