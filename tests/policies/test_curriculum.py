"""Curriculum pacing and token weights, against hand-computed values."""

import math

import pytest
import torch

from egad_cli.policies.curriculum import Curriculum, pacing

T, F = True, False


def b(*xs):
    return torch.tensor(xs, dtype=torch.bool)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# s = 0, 0.5, 1 with rho = 0.8: s/rho = 0, 0.625, 1.25 -> x = 0, 0.625, 1
@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("none", (1.0, 1.0, 1.0)),
        ("linear", (0.0, 0.625, 1.0)),
        ("cosine", (0.0, 0.5 * (1 - math.cos(0.625 * math.pi)), 1.0)),   # 0.69134...
        ("sqrt", (0.0, math.sqrt(0.625), 1.0)),                           # 0.79057...
        ("step", (0.0, 0.5, 1.0)),                                        # floor(2.5) / 4
    ],
)
def test_pacing_hand_computed(schedule, expected):
    got = tuple(pacing(schedule, s, rho=0.8, n_stages=4) for s in (0.0, 0.5, 1.0))
    assert got == pytest.approx(expected, abs=1e-12)


def test_pacing_cosine_value_and_step_boundaries():
    assert pacing("cosine", 0.5) == pytest.approx(0.6913417161825449)
    # 0.6/0.8 is 0.7499999999999999 in floating point; the stage boundary must still be 3/4.
    assert pacing("step", 0.6) == 0.75
    assert pacing("step", 0.59) == 0.5
    assert pacing("step", 0.5, n_stages=2) == 0.5


def test_pacing_errors():
    with pytest.raises(ValueError, match="none, linear, cosine, sqrt, step"):
        pacing("exponential", 0.5)
    for s in (-0.1, 1.1):
        with pytest.raises(ValueError):
            pacing("linear", s)


U = t(0.0, 0.25, 0.5, 1.0, 0.7)
V = b(T, T, T, T, F)


def test_soft_linear_early_easy_tokens_dominate():
    w = Curriculum("linear").weights(U, V, 0.0)
    # c = 0: w ∝ exp(-(2u - 1)) = e^1, e^0.5, e^0, e^-1, renormalised to mean 1 over 4 valid tokens
    raw = [math.e, math.exp(0.5), 1.0, math.exp(-1.0)]
    expected = t(*[4 * r / sum(raw) for r in raw], 0.0)
    assert torch.allclose(w, expected, atol=1e-6)
    assert torch.all(w[:3] > w[1:4])                       # decreasing in u
    assert w[V].mean().item() == pytest.approx(1.0, abs=1e-6)
    assert w[4] == 0


def test_soft_linear_midpoint_uniform():
    w = Curriculum("linear", rho=0.8).weights(U, V, 0.4)   # s = rho/2 -> c = 0.5
    assert torch.equal(w, t(1.0, 1.0, 1.0, 1.0, 0.0))


def test_soft_linear_late_hard_tokens_dominate():
    w = Curriculum("linear").weights(U, V, 1.0)
    raw = [math.exp(-1.0), 1 / math.exp(0.5), 1.0, math.e]  # c = 1: w ∝ exp(2u - 1)
    expected = t(*[4 * r / sum(raw) for r in raw], 0.0)
    assert torch.allclose(w, expected, atol=1e-6)
    assert torch.all(w[:3] < w[1:4])
    assert w[V].mean().item() == pytest.approx(1.0, abs=1e-6)


def test_soft_gamma_scales_contrast():
    # c = 0, gamma = 2: the weight ratio between u = 0 and u = 1 is e^{2 gamma} = e^4
    w = Curriculum("linear", gamma=2.0).weights(t(0.0, 1.0), b(T, T), 0.0)
    assert (w[0] / w[1]).item() == pytest.approx(math.exp(4), rel=1e-5)
    # a huge gamma must not overflow
    w = Curriculum("linear", gamma=500.0).weights(t(0.0, 1.0), b(T, T), 1.0)
    assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(2.0)


def test_hard_gate():
    cur = Curriculum("linear", mode="hard", c0=0.3)
    u = t(0.0, 0.2, 0.3, 0.31, 0.9, 0.1)
    v = b(T, T, T, T, T, F)
    assert cur.gate(0.0) == pytest.approx(0.3)
    assert torch.equal(cur.weights(u, v, 0.0), t(1, 1, 1, 0, 0, 0))   # exactly u <= 0.3
    assert cur.gate(0.4) == pytest.approx(0.65)                        # 0.3 + 0.7 * 0.5
    assert torch.equal(cur.weights(u, v, 0.4), t(1, 1, 1, 1, 0, 0))
    assert cur.gate(1.0) == 1.0
    assert torch.equal(cur.weights(u, v, 1.0), t(1, 1, 1, 1, 1, 0))   # all valid


def test_none_schedule_is_uniform_on_valid_tokens():
    for mode in ("soft", "hard"):
        cur = Curriculum("none", mode=mode)
        for s in (0.0, 0.5, 1.0):
            assert torch.equal(cur.weights(U, V, s), t(1, 1, 1, 1, 0))


def test_all_invalid_gives_zeros():
    for mode in ("soft", "hard"):
        for sched in ("linear", "none"):
            w = Curriculum(sched, mode=mode).weights(t(0.2, 0.8), b(F, F), 0.1)
            assert torch.equal(w, t(0.0, 0.0))
    assert Curriculum("linear").weights(t(), b(), 0.0).shape == (0,)


def test_bad_settings():
    with pytest.raises(ValueError, match="soft, hard"):
        Curriculum("linear", mode="medium")
    with pytest.raises(ValueError, match="valid choices"):
        Curriculum("exp")
    with pytest.raises(ValueError):
        Curriculum("linear", c0=1.5)
    with pytest.raises(ValueError):
        Curriculum("linear").weights(U, V, 2.0)
