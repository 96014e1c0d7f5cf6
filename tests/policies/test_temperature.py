"""Per-token temperatures: EGAD entropy temperature, AdaKD's IDTS, the target-entropy temperature, the τ² choices."""

import math

import pytest
import torch

from egad_cli.config.policies import TEMPERATURES, PolicyContext
from egad_cli.policies.stats import DIFFICULTY, HELLINGER, StepStats, teacher_entropy
from egad_cli.policies.temperature import (
    TargetEntropyTemperature,
    divergence_factor,
    entropy_temperature,
    fixed_temperature,
    idts_temperature,
    target_entropy_temperature,
    valid_median,
)

T, F = True, False


def b(*xs):
    return torch.tensor(xs, dtype=torch.bool)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


def test_fixed():
    assert torch.equal(fixed_temperature(3, 2.0), t(2.0, 2.0, 2.0))
    with pytest.raises(ValueError):
        fixed_temperature(3, 0.0)


def test_entropy_temperature_values_clip_and_flip():
    u, v = t(0.0, 0.5, 1.0, 0.3), b(T, T, T, F)
    e = math.exp(0.5)
    tau = entropy_temperature(u, v, base=1.0, kappa=0.5)
    assert torch.allclose(tau, t(1 / e, 1.0, e, 1.0))              # invalid -> base
    # clipped to [0.7, 1.5]
    tau = entropy_temperature(u, v, base=1.0, kappa=0.5, t_min=0.7, t_max=1.5)
    assert torch.allclose(tau, t(0.7, 1.0, 1.5, 1.0))
    # default range [0.5, 2]: kappa = 1 gives e^-1 = 0.37 -> 0.5 and e = 2.72 -> 2
    assert torch.allclose(entropy_temperature(u, v, kappa=1.0), t(0.5, 1.0, 2.0, 1.0))
    # kappa < 0 flips: hard tokens get the lower temperature
    tau = entropy_temperature(u, v, base=1.0, kappa=-0.5)
    assert torch.allclose(tau, t(e, 1.0, 1 / e, 1.0))
    # base scales
    assert torch.allclose(entropy_temperature(t(0.5), b(T), base=1.5), t(1.5))


def test_valid_median():
    assert valid_median(t(0.4, 0.1, 0.2, 9.0), b(T, T, T, F)).item() == pytest.approx(0.2)
    assert valid_median(t(0.1, 0.3, 0.2, 0.5), b(T, T, T, T)).item() == pytest.approx(0.25)
    assert valid_median(t(0.1), b(F)).item() == 0.0


def test_idts_hand_computed():
    # median 0.2; tanh(ln 2) = (4 - 1) / (4 + 1) = 0.6, tanh(ln 0.5) = -0.6
    s, v = t(0.1, 0.2, 0.4, 100.0), b(T, T, T, F)
    tau = idts_temperature(s, v, base=1.0, c=0.5)
    assert torch.allclose(tau, t(math.exp(0.3), 1.0, math.exp(-0.3), 1.0))
    tau = idts_temperature(s, v, base=2.0, c=0.5)
    assert tau[1].item() == pytest.approx(2.0)            # base at the median
    assert tau[2].item() < 2.0 < tau[0].item()            # below base above the median
    # optional clipping
    tau = idts_temperature(s, v, base=2.0, c=0.5, t_min=1.9, t_max=2.1)
    assert torch.allclose(tau, t(2.1, 2.0, 1.9, 2.0))


def test_idts_zero_guards():
    tau = idts_temperature(t(0.0, 0.0, 0.0), b(T, T, T))      # median 0, s 0 -> ratio 1
    assert torch.equal(tau, t(1.0, 1.0, 1.0))
    tau = idts_temperature(t(0.0, 0.2, 0.2), b(T, T, T))      # s = 0 -> tanh -> -1 -> e^{c}
    assert torch.isfinite(tau).all()
    assert torch.allclose(tau, t(math.exp(0.5), 1.0, 1.0))
    tau = idts_temperature(t(0.3, 0.5), b(F, F))                # nothing valid
    assert torch.equal(tau, t(1.0, 1.0))


def test_registry():
    u, h, v = t(0.0, 1.0), t(0.1, 0.4), b(T, T)
    ctx = PolicyContext(vocab_size=8)
    stats = StepStats(v, 0.0, {DIFFICULTY: u, HELLINGER: h})
    fixed = TEMPERATURES["fixed"](base=2.0).build(ctx)
    assert torch.equal(fixed(stats), t(2.0, 2.0)) and fixed.needs == set()
    ent = TEMPERATURES["entropy"](kappa=0.5).build(ctx)
    assert torch.equal(ent(stats), entropy_temperature(u, v, kappa=0.5)) and ent.needs == {DIFFICULTY}
    idts = TEMPERATURES["idts"](c=0.5, t_min=0.1, t_max=10.0).build(ctx)
    assert torch.equal(idts(stats), idts_temperature(h, v, c=0.5, t_min=0.1, t_max=10.0))
    assert idts.needs == {HELLINGER}
    with pytest.raises(KeyError, match="hellinger"):   # a statistic the step did not compute
        idts(StepStats(v, 0.0, {DIFFICULTY: u}))
    with pytest.raises(KeyError, match="fixed, entropy, idts, target_entropy"):
        TEMPERATURES["cosine"]
    with pytest.raises(TypeError, match="kappa"):      # a field only the entropy node has
        TEMPERATURES["fixed"](kappa=0.5)


# --------------------------------------------------------------------------- target entropy

def tempered_entropy(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Naive fp64 H(softmax(logits / τ)) [N] from logits [N, V] (−inf: an impossible token)."""
    logp = torch.log_softmax(logits.double() / tau, dim=-1)
    return -(logp.exp() * logp).nan_to_num(nan=0.0).sum(-1)


def bisect_tau(logits_row: torch.Tensor, target: float, lo: float, hi: float) -> float:
    """The naive reference: the τ in [lo, hi] with H(τ) = target by bisection in log τ (H increases with τ)."""
    h = lambda tau: float(tempered_entropy(logits_row[None], tau)[0])
    if h(lo) >= target:
        return lo
    if h(hi) < target:
        return hi
    a, b_ = math.log(lo), math.log(hi)
    for _ in range(60):
        m = 0.5 * (a + b_)
        a, b_ = (m, b_) if h(math.exp(m)) < target else (a, m)
    return math.exp(0.5 * (a + b_))


def grid_entropies(logits: torch.Tensor, grid: list[float]) -> torch.Tensor:
    return torch.stack([tempered_entropy(logits, g).float() for g in grid], dim=1)  # [N, G]


def test_target_entropy_matches_bisection_on_a_fine_grid_and_brackets_the_root_on_a_coarse_one():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 50, generator=gen) * torch.linspace(0.3, 6.0, 40)[:, None]  # flat to peaked rows
    valid = torch.ones(40, dtype=torch.bool)
    target = 2.0
    roots = torch.tensor([bisect_tau(row, target, 0.5, 2.0) for row in logits])  # [N]
    # a fine grid: piecewise-linear log τ against H is within the root to second order in the step (2^(1/64))
    fine = [0.5 * 4 ** (i / 128) for i in range(129)]
    tau = target_entropy_temperature(grid_entropies(logits, fine), torch.tensor(fine), target, valid)
    torch.testing.assert_close(tau, roots.float(), rtol=2e-3, atol=0.0)
    # the default grid: the root and the interpolated τ lie in the same grid bracket (H is monotone in τ)
    coarse = [0.5, 0.7071, 1.0, 1.4142, 2.0]
    tau = target_entropy_temperature(grid_entropies(logits, coarse), torch.tensor(coarse), target, valid)
    edges = torch.tensor(coarse)
    same = torch.bucketize(tau, edges, right=False) == torch.bucketize(roots.float(), edges, right=False)
    on_edge = torch.isclose(tau[:, None], edges).any(1) | torch.isclose(roots.float()[:, None], edges).any(1)
    assert bool((same | on_edge).all())
    assert 0 < int(((roots > 0.5) & (roots < 2.0)).sum()) < 40  # the rows both reach the target and miss it
    # where the target is reachable, H at the interpolated τ and the target both lie in the bracket's entropy range
    # (H is monotone in τ), so they differ by at most that bracket's width in entropy
    inside = (roots > 0.5) & (roots < 2.0)
    h = grid_entropies(logits, coarse).double()  # [N, G]
    j = torch.bucketize(roots.float(), edges).clamp(1, len(coarse) - 1)  # [N] the bracket [j − 1, j] of the root
    width = (h.gather(1, j[:, None]) - h.gather(1, (j - 1)[:, None])).squeeze(1)  # [N]
    got = torch.tensor([float(tempered_entropy(r[None], float(x))[0]) for r, x in zip(logits, tau)])
    assert bool(((got - target).abs() <= width + 1e-5)[inside].all())


def test_target_entropy_edge_cases_one_hot_uniform_and_clipped():
    grid = torch.tensor([0.5, 1.0, 2.0])
    v = 8
    one_hot = torch.full((v,), -math.inf)
    one_hot[3] = 0.0  # H = 0 at every τ
    uniform = torch.zeros(v)  # H = log 8 at every τ
    peaked = torch.tensor([8.0] + [0.0] * (v - 1))  # H(2) well below log 8
    logits = torch.stack([one_hot, one_hot, uniform, uniform, peaked])
    h = grid_entropies(logits, grid.tolist())
    targets = torch.tensor([0.5, 0.0, 1.0, 3.0, math.log(v) - 1e-3])
    tau = target_entropy_temperature(h, grid, targets, torch.ones(5, dtype=torch.bool))
    # one-hot: no τ softens it to 0.5 nats -> the largest; a target of 0 is met already at the smallest
    # uniform: no τ sharpens it to 1 nat -> the smallest; 3 > log 8 = 2.08 is never reached -> the largest
    # peaked: a target near log|V| is out of reach within [0.5, 2] -> clipped at 2
    assert tau.tolist() == pytest.approx([2.0, 0.5, 0.5, 2.0, 2.0])
    invalid = target_entropy_temperature(h, grid, targets, torch.zeros(5, dtype=torch.bool), base=1.5)
    assert torch.equal(invalid, torch.full((5,), 1.5))
    with pytest.raises(ValueError, match="increasing"):
        target_entropy_temperature(h, torch.tensor([2.0, 1.0, 0.5]), 1.0, torch.ones(5, dtype=torch.bool))


def test_target_entropy_policy_median_target_gives_the_median_token_tau_one():
    logits = torch.randn(7, 30, generator=torch.Generator().manual_seed(1)) * torch.arange(1, 8)[:, None].float()
    grid = [0.5, 0.7071, 1.0, 1.4142, 2.0]
    values = {teacher_entropy(g): tempered_entropy(logits, g).float() for g in grid}
    valid = torch.ones(7, dtype=torch.bool)
    policy = TEMPERATURES["target_entropy"](grid=grid).build(PolicyContext(vocab_size=30))
    assert policy.needs == {teacher_entropy(g) for g in grid} and policy.scale == "tau2"
    tau = policy(StepStats(valid, 0.0, values))
    h1 = values[teacher_entropy(1.0)]
    median = int(h1.argsort()[3])  # 7 tokens: the 4th by entropy is the median
    assert float(tau[median]) == pytest.approx(1.0, rel=1e-6)
    assert policy.logs()["tau_target_entropy"] == pytest.approx(float(h1[median]))
    # more uncertain than the median: sharpened (τ ≤ 1); more confident: softened (τ ≥ 1)
    assert bool((tau[h1 > h1[median]] <= 1.0).all()) and bool((tau[h1 < h1[median]] >= 1.0).all())
    with pytest.raises(ValueError, match="1.0"):
        TargetEntropyTemperature(grid=(0.5, 2.0))  # the median target reads T = 1


def test_divergence_factor_values():
    tau, valid = t(0.5, 1.0, 2.0, 3.0), b(T, T, T, F)
    assert torch.equal(divergence_factor(tau, valid, "tau2"), t(0.25, 1.0, 4.0, 9.0))
    assert torch.equal(divergence_factor(tau, valid, "none"), t(1.0, 1.0, 1.0, 1.0))
    mean1 = divergence_factor(tau, valid, "mean1")  # τ² over its mean on the valid tokens (5.25 / 3 = 1.75)
    torch.testing.assert_close(mean1, t(0.25, 1.0, 4.0, 9.0) / 1.75)
    assert float(mean1[valid].mean()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tau2, none, mean1"):
        divergence_factor(tau, valid, "square")
    built = TEMPERATURES["fixed"](base=2.0, scale="mean1").build(PolicyContext(vocab_size=8))
    assert built.scale == "mean1" and torch.equal(built.factor(t(2.0, 2.0), b(T, T)), t(1.0, 1.0))
