"""Per-token temperatures: EGAD entropy temperature and AdaKD's IDTS."""

import math

import pytest
import torch

from egad_cli.config.policies import TEMPERATURES, PolicyContext
from egad_cli.policies.stats import DIFFICULTY, HELLINGER, StepStats
from egad_cli.policies.temperature import (
    entropy_temperature,
    fixed_temperature,
    idts_temperature,
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
    with pytest.raises(KeyError, match="fixed, entropy, idts"):
        TEMPERATURES["cosine"]
    with pytest.raises(TypeError, match="kappa"):      # a field only the entropy node has
        TEMPERATURES["fixed"](kappa=0.5)
