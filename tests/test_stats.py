"""The report's statistics (egad_cli.stats) on hand-made numbers with known answers."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from egad_cli.stats import paired_difference, seeds_needed, t_quantile, two_sided_t_mass


@pytest.mark.parametrize(("df", "want"), [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706),
                                          (9, 2.2622), (10, 2.2281), (30, 2.0423), (120, 1.9799)])
def test_t_quantile_matches_the_published_table(df, want):
    assert t_quantile(0.95, df) == pytest.approx(want, abs=1e-4)


def test_t_mass_identities():
    """df = 1 is the Cauchy distribution (P(|T| ≤ t) = 2 atan(t) / π); df → ∞ the normal (erf)."""
    for t in (0.1, 1.0, 3.0, 20.0):
        assert two_sided_t_mass(t, 1) == pytest.approx(2 * math.atan(t) / math.pi, rel=1e-12)
        assert two_sided_t_mass(t, 2) == pytest.approx(t / math.sqrt(2 + t * t), rel=1e-12)  # closed form, df = 2
    assert two_sided_t_mass(1.959963985, 4001) == pytest.approx(math.erf(1.959963985 / math.sqrt(2)), abs=1e-4)
    assert t_quantile(0.99, 4) == pytest.approx(4.6041, abs=1e-4)


def test_paired_difference_equals_the_hand_computation_and_calls_a_clear_gap():
    base = {"0": 3.0, "1": 3.4, "2": 3.1, "3": 3.3}
    better = {"0": 2.9, "1": 3.25, "2": 3.02, "3": 3.17, "9": 1.0}  # seed 9 has no partner: left out
    d = [-0.1, -0.15, -0.08, -0.13]
    got = paired_difference(better, base)
    half = 3.182446305284263 * statistics.stdev(d) / 2  # t_{.975, 3} · sd / √4
    assert got.n == 4 and got.mean == pytest.approx(statistics.mean(d), abs=1e-12)
    assert (got.low, got.high) == pytest.approx((statistics.mean(d) - half, statistics.mean(d) + half), abs=1e-9)
    assert got.verdict == "lower" and "lower" in got.text()
    worse = {s: v + 0.2 for s, v in base.items()}
    worse["1"] -= 0.01  # a spread, so the interval has width
    assert paired_difference(worse, base).verdict == "higher"


def test_inconclusive_when_the_interval_contains_zero_or_one_seed():
    base = {"0": 3.0, "1": 3.4, "2": 3.1}
    mixed = {"0": 2.8, "1": 3.6, "2": 3.05}  # −0.2, +0.2, −0.05
    assert paired_difference(mixed, base).verdict == "inconclusive"
    one = paired_difference({"0": 1.0}, base)
    assert one.n == 1 and one.low is None and one.verdict == "inconclusive"
    assert paired_difference({"7": 1.0}, base) is None


def test_the_interval_covers_at_its_nominal_rate():
    """Known normal differences (mean 0.3, sd 1), 5 seeds: the 95 % interval covers 0.3 in 95 % of 4000
    repeats; the binomial sd of the rate is √(.95 · .05 / 4000) = 0.0034, so 0.93–0.97 is 6 sd wide."""
    rng = random.Random(0)
    covered = 0
    for _ in range(4000):
        base = {str(i): rng.gauss(3.0, 2.0) for i in range(5)}
        other = {s: v + 0.3 + rng.gauss(0.0, 1.0) for s, v in base.items()}
        diff = paired_difference(other, base)
        covered += diff.low <= 0.3 <= diff.high
    assert 0.93 <= covered / 4000 <= 0.97


def test_a_non_finite_difference_is_inconclusive():
    """A diverged run (NaN or inf in its summary) must not read as a clear win or loss."""
    assert paired_difference({"0": math.nan, "1": 1.0}, {"0": 0.0, "1": 0.0}).verdict == "inconclusive"
    assert paired_difference({"0": math.inf, "1": 1.0}, {"0": 0.0, "1": 0.0}).verdict == "inconclusive"


@pytest.mark.parametrize(("effect", "want"), [(0.5, 34), (1.0, 10), (0.8, 15)])
def test_seeds_needed_matches_the_published_paired_t_sample_sizes(effect, want):
    """G*Power's paired t test, two-sided α = 0.05, power 0.8: dz = 0.5 → 34, 1.0 → 10, 0.8 → 15."""
    assert seeds_needed(sd=2.0, delta=2.0 * effect) == want


def test_seeds_needed_approaches_the_normal_formula_and_its_edges():
    # n ≈ (z_0.975 + z_0.8)² (sd/δ)² = 7.849 · 100 for sd/δ = 10; the t quantiles add a seed or two
    assert 785 <= seeds_needed(sd=10.0, delta=1.0) <= 790
    assert seeds_needed(sd=0.0, delta=1.0) == 2
    assert seeds_needed(sd=1.0, delta=100.0) == 2
    assert seeds_needed(sd=math.inf, delta=1.0) is None and seeds_needed(sd=math.nan, delta=1.0) is None
    assert seeds_needed(sd=1e6, delta=1.0, max_n=1000) is None
    assert seeds_needed(sd=1.0, delta=0.0) is None


def test_seeds_needed_resolves_the_difference_at_the_stated_power():
    """Simulated: with the returned n, the 95 % interval of normal paired differences of mean δ excludes zero
    in ~80 % of repeats (binomial sd over 2,000 repeats: 0.9 %; the shifted-t approximation errs by < 1 %)."""
    rng = random.Random(7)
    sd, delta = 1.0, 0.6
    n = seeds_needed(sd, delta)
    hits = 0
    for _ in range(2000):
        d = paired_difference({str(i): rng.gauss(delta, sd) for i in range(n)}, {str(i): 0.0 for i in range(n)})
        hits += d.verdict == "higher"
    assert 0.76 <= hits / 2000 <= 0.86
    fewer = seeds_needed(sd, delta, power=0.6)
    assert fewer < n
