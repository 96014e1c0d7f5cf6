"""EA-KD weights and AdaKD's top-ratio mask and LATF controller."""

import io
import itertools
import math

import pytest
import torch

from egad_cli.policies.adakd import LATF, top_ratio_mask
from egad_cli.policies.eakd import eakd_weights

T, F = True, False


def b(*xs):
    return torch.tensor(xs, dtype=torch.bool)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# ---------------------------------------------------------------- EA-KD


def test_eakd_hand_computed():
    L = math.log(100)
    Ht = t(2.0, 1.0, 0.0, 3.0)
    Hs = t(L, 0.0, 1.0, 2.0)
    w = eakd_weights(Ht, Hs, b(T, T, T, F), vocab_size=100)
    # ½·2·(1 + 1) = 2; ½·1·(1 + 0) = 0.5; ½·0·(...) = 0; invalid -> 0
    assert torch.allclose(w, t(2.0, 0.5, 0.0, 0.0))
    w = eakd_weights(t(3.0), t(1.0), b(T), vocab_size=100)
    assert w.item() == pytest.approx(0.5 * 3.0 * (1 + 1.0 / L))


def test_eakd_invalid_nan_and_all_invalid():
    w = eakd_weights(t(1.0, float("nan")), t(1.0, 1.0), b(T, F), vocab_size=10)
    assert torch.isfinite(w).all() and w[1] == 0
    assert torch.equal(eakd_weights(t(1.0), t(1.0), b(F), vocab_size=10), t(0.0))


# ---------------------------------------------------------------- top ratio


def test_top_ratio_mask():
    h = t(0.1, 0.4, 0.3, 0.4, 0.9)
    v = b(T, T, T, T, F)
    assert torch.equal(top_ratio_mask(h, v, 0.5), b(F, T, F, T, F))   # ties 0.4 -> both
    assert torch.equal(top_ratio_mask(h, v, 0.25), b(F, T, F, F, F))  # tie broken by index
    assert torch.equal(top_ratio_mask(h, v, 0.0), b(F, T, F, F, F))   # at least one
    assert torch.equal(top_ratio_mask(h, v, 1.0), v)
    assert not top_ratio_mask(h, torch.zeros(5, dtype=torch.bool), 0.5).any()


# ---------------------------------------------------------------- LATF


def test_latf_ema_initialisation():
    latf = LATF(total_steps=100, beta=0.5)
    latf.update(1, 1.0)
    assert latf.ema == 1.0                      # first value initialises
    latf.update(2, 0.0)
    assert latf.ema == 0.5
    latf.update(3, 0.0)
    assert latf.ema == 0.25


def test_latf_hand_computed_decrease():
    # beta = 0 makes EMA = loss; warm-up = round(0.05 * 100) = 5 steps
    latf = LATF(total_steps=100, beta=0.0)
    assert latf.warmup_steps == 5
    for step in range(1, 6):
        assert latf.update(step, 1.0 if step < 5 else 2.0) == 1.0   # r0 during warm-up
    assert latf.ref == 2.0                       # reference = EMA when warm-up ends
    assert latf.update(6, 1.9) == 1.0            # inside the ±5 % band: no change
    assert latf.update(7, 1.8) == pytest.approx(0.95)     # 1.8 < 1.9: r·0.95, ref <- 1.8
    assert latf.ref == 1.8
    assert latf.update(8, 1.75) == pytest.approx(0.95)    # 1.75 > 1.71: no change
    assert latf.update(9, 1.7) == pytest.approx(0.9025)   # 1.7 < 1.71


def test_latf_decreasing_loss_lowers_ratio_with_default_beta():
    latf = LATF(total_steps=1000)
    ratios = [latf.update(s, 5.0 / (1 + 0.01 * s)) for s in range(1, 1001)]
    assert all(r == 1.0 for r in ratios[:50])
    assert ratios[-1] < 0.5
    assert all(a >= b_ for a, b_ in itertools.pairwise(ratios))   # monotone non-increasing


def test_latf_increasing_loss_raises_ratio_capped_at_one():
    latf = LATF(total_steps=100, r0=0.5, beta=0.0)
    ratios = [latf.update(s, 1.0 * 1.1 ** s) for s in range(1, 60)]
    assert ratios[4] == 0.5                       # still warm-up
    assert ratios[5] == pytest.approx(0.525)      # first step after warm-up: 10 % > 5 %
    assert ratios[-1] == 1.0 and max(ratios) == 1.0


def test_latf_floor():
    latf = LATF(total_steps=20, r0=0.12, beta=0.0, warmup_frac=0.05)   # warm-up 1 step
    ratios = [latf.update(s, 0.5 ** s) for s in range(1, 30)]
    assert ratios[1] == pytest.approx(0.114)
    assert ratios[2] == pytest.approx(0.1083)
    assert min(ratios) == 0.1 and ratios[-1] == 0.1


def test_latf_state_round_trip_continues_identically():
    losses = [3.0 + math.sin(0.3 * s) - 0.01 * s for s in range(1, 201)]
    a = LATF(total_steps=200, beta=0.9)
    for s in range(1, 81):
        a.update(s, losses[s - 1])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = LATF(total_steps=200, beta=0.9)
    c.load_state_dict(torch.load(buf))
    assert c.state_dict() == a.state_dict()
    ra = [a.update(s, losses[s - 1]) for s in range(81, 201)]
    rc = [c.update(s, losses[s - 1]) for s in range(81, 201)]
    assert ra == rc
    assert a.state_dict() == c.state_dict()
    assert len(set(ra)) > 1                       # the continuation actually adapts


def test_latf_rejects_bad_input():
    with pytest.raises(ValueError, match="r0"):
        LATF(total_steps=10, r0=0.05)
    with pytest.raises(ValueError):
        LATF(total_steps=10).update(1, float("nan"))
