"""Statistics for comparing runs over seeds: a paired difference with its 95 % interval.

Sweeps compare methods over a handful of seeds (3–10), so the interval is Student's t, not a bootstrap:
resampling 3–5 paired differences gives an interval too narrow to cover at its nominal rate (with n = 3
the bootstrap can only return 10 distinct means). With d_i = metric(method, seed i) − metric(baseline,
seed i) over the n seeds both finished:

    mean ± t_{0.975, n−1} · sd(d) / √n

which assumes the differences are roughly normal; the seeds pair away what they share (the init and the
data order). "inconclusive" where the interval contains zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PairedDiff", "mean_interval", "paired_difference", "seeds_needed", "t_quantile", "two_sided_t_mass"]


def two_sided_t_mass(t: float, df: int) -> float:
    """P(|T| ≤ t) for Student's t with df (integer ≥ 1) degrees of freedom, in closed form
    (Abramowitz & Stegun 26.7.3–4): with θ = atan(t / √df), c = cos²θ,
    odd df:  (2/π) (θ + sin θ cos θ Σ_{j=0}^{(df−3)/2} a_j c^j),  a_0 = 1, a_j = a_{j−1} · 2j / (2j + 1);
    even df: sin θ Σ_{j=0}^{(df−2)/2} b_j c^j,                 b_0 = 1, b_j = b_{j−1} · (2j − 1) / (2j)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    c, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:
        total, term = 0.0, 1.0
        for j in range((df - 1) // 2):
            if j:
                term *= 2 * j / (2 * j + 1) * c
            total += term
        return 2 / math.pi * (theta + s * math.cos(theta) * total) if df > 1 else 2 * theta / math.pi
    total, term = 0.0, 1.0
    for j in range(df // 2):
        if j:
            term *= (2 * j - 1) / (2 * j) * c
        total += term
    return s * total


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(|T| ≤ t) = confidence (the two-sided critical value; 0.95 → 12.706 at df = 1,
    2.776 at df = 4, 1.960 as df → ∞), by bisection on ``two_sided_t_mass`` (monotone in t)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = 0.0, 1.0
    while two_sided_t_mass(hi, df) < confidence:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if two_sided_t_mass(mid, df) < confidence:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * hi:
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class PairedDiff:
    """A paired difference over seeds: method − baseline."""

    n: int  #: seeds both finished
    mean: float
    sd: float | None  #: sample sd of the differences (None when n = 1)
    low: float | None  #: the 95 % interval (None when n = 1: no spread to go on)
    high: float | None

    @property
    def verdict(self) -> str:
        """'lower' / 'higher' when the interval excludes zero, 'inconclusive' when it contains it (or n = 1)."""
        if self.low is None or not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low <= 0 <= self.high:
            return "inconclusive"
        return "lower" if self.high < 0 else "higher"

    def text(self, digits: int = 4) -> str:
        if self.low is None:
            return f"{self.mean:+.{digits}f} (n=1) inconclusive"
        return (f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] "
                f"(n={self.n}) {self.verdict}")


def paired_difference(values: dict[str, float], baseline: dict[str, float], confidence: float = 0.95
                      ) -> PairedDiff | None:
    """values − baseline over the seeds (keys) both have, with its t interval; None when none is shared."""
    diffs = [values[s] - baseline[s] for s in values if s in baseline]
    if not diffs:
        return None
    n = len(diffs)
    mean = sum(diffs) / n
    if n == 1:
        return PairedDiff(1, mean, None, None, None)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return PairedDiff(n, mean, sd, mean - half, mean + half)


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the mean of `values` with its t interval (None, None for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def seeds_needed(sd: float, delta: float, confidence: float = 0.95, power: float = 0.8, max_n: int = 100_000
                 ) -> int | None:
    """Seeds a paired comparison needs to resolve a true difference of ``delta`` when the per-seed
    differences have standard deviation ``sd``: the smallest n ≥ 2 whose ``confidence`` t interval
    excludes zero with probability ``power``, i.e. (the shifted-t approximation of the noncentral t,
    the textbook sample-size formula; it gives G*Power's 34 seeds at δ/sd = 0.5 and 10 at δ/sd = 1)

        t_{(1+confidence)/2, n−1} + t_{power, n−1} ≤ δ √n / sd.

    None when even ``max_n`` seeds would not do (or sd is not finite); 2 when sd = 0."""
    if not 0.5 < power < 1:
        raise ValueError(f"power must be in (0.5, 1), got {power}")
    if not (math.isfinite(sd) and sd >= 0) or not delta > 0:
        return None
    one_sided_power = 2 * power - 1  # the two-sided mass whose upper quantile is the one-sided `power` quantile

    def enough(n: int) -> bool:
        return t_quantile(confidence, n - 1) + t_quantile(one_sided_power, n - 1) <= delta * math.sqrt(n) / sd

    if sd == 0:
        return 2
    lo, hi = 1, 2  # enough(lo) is false by convention (one seed has no spread); find a hi that is enough
    while not enough(hi):
        if hi >= max_n:
            return None
        lo, hi = hi, min(2 * hi, max_n)
    while hi - lo > 1:  # the left side falls and the right side rises with n: bisect on the first n that is enough
        mid = (lo + hi) // 2
        if enough(mid):
            hi = mid
        else:
            lo = mid
    return hi
