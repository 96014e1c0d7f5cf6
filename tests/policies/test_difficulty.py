"""Difficulty estimators: hand-computed ranks, normalisation and running-quantile CDFs."""

import io
import math

import pytest
import torch

from egad_cli.config.policies import DIFFICULTIES, PolicyContext
from egad_cli.policies.difficulty import (
    NormalizedDifficulty,
    RankDifficulty,
    RunningQuantileDifficulty,
    normalized_difficulty,
    rank_difficulty,
)
from egad_cli.policies.stats import DIFFICULTY, StepStats, teacher_entropy

T, F = True, False


def b(*xs):
    return torch.tensor(xs, dtype=torch.bool)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# ---------------------------------------------------------------- rank


def test_rank_ties_average_and_invalid_excluded():
    H = t(0.1, 0.5, 0.5, 2.0)
    # valid 0.1, 0.5, 0.5 -> 0-based ranks 0, 1.5, 1.5 over n-1 = 2; the invalid 2.0 is ignored.
    assert torch.equal(rank_difficulty(H, b(T, T, T, F)), t(0.0, 0.75, 0.75, 0.0))
    # valid 0.5, 0.5, 2.0 -> ranks 0.5, 0.5, 2 over 2.
    assert torch.equal(rank_difficulty(H, b(F, T, T, T)), t(0.0, 0.25, 0.25, 1.0))
    # all valid -> ranks 0, 1.5, 1.5, 3 over 3.
    assert torch.equal(rank_difficulty(H, b(T, T, T, T)), t(0.0, 0.5, 0.5, 1.0))


def test_rank_unsorted_input_and_all_equal():
    assert torch.equal(rank_difficulty(t(3.0, 1.0, 2.0), b(T, T, T)), t(1.0, 0.0, 0.5))
    assert torch.equal(rank_difficulty(t(1.0, 1.0, 1.0), b(T, T, T)), t(0.5, 0.5, 0.5))


def test_rank_degenerate_counts():
    assert torch.equal(rank_difficulty(t(0.3, 0.9), b(F, T)), t(0.0, 0.5))   # one valid -> 0.5
    u = rank_difficulty(t(0.3, 0.9), b(F, F))                                # none valid -> zeros
    assert torch.equal(u, t(0.0, 0.0))
    assert rank_difficulty(t(), b()).shape == (0,)


def test_rank_detached_fp32():
    H = t(0.1, 0.2, 0.3).requires_grad_()
    u = rank_difficulty(H, b(T, T, T))
    assert not u.requires_grad and u.dtype == torch.float32


def test_rank_rejects_bad_shapes():
    with pytest.raises(ValueError):
        rank_difficulty(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError):
        rank_difficulty(t(1.0, 2.0), torch.tensor([1, 1]))


# ---------------------------------------------------------------- normalized


def test_normalized_divides_by_log_vocab_and_clamps():
    L = math.log(8)
    H = t(0.0, L / 2, 2 * L, 1.0, 0.7)
    u = normalized_difficulty(H, b(T, T, T, T, F), 8)
    expected = t(0.0, 0.5, 1.0, 1.0 / L, 0.0)
    assert torch.allclose(u, expected, atol=1e-7)
    with pytest.raises(ValueError):
        normalized_difficulty(H, b(T, T, T, T, F), 1)


# ---------------------------------------------------------------- running quantile


def test_running_quantile_hand_computed():
    rq = RunningQuantileDifficulty(n_bins=4, h_max=4.0)          # bins of width 1 over [0, 4]
    # counts become [1,1,1,1]; u = (tokens in lower bins + frac * bin count) / 4
    u1 = rq(t(0.5, 1.5, 2.5, 3.5), b(T, T, T, T))
    assert torch.allclose(u1, t(0.125, 0.375, 0.625, 0.875))
    # update first (counts [3,1,1,1], total 6; the invalid 3.9 is not counted), then evaluate
    u2 = rq(t(0.25, 0.75, 3.9), b(T, T, F))
    assert torch.allclose(u2, t(0.25 * 3 / 6, 0.75 * 3 / 6, 0.0))
    assert rq.total == 6
    assert torch.equal(rq.counts, torch.tensor([3, 1, 1, 1]))
    # beyond h_max -> last bin, fully counted -> 1; below 0 -> 0
    u3 = rq.cdf(t(5.0, -1.0), b(T, T))
    assert torch.allclose(u3, t(1.0, 0.0))


def test_running_quantile_default_h_max_is_log_vocab():
    rq = DIFFICULTIES["running_quantile"](n_bins=16).build(PolicyContext(vocab_size=1000))
    assert isinstance(rq, RunningQuantileDifficulty)
    assert rq.h_max == pytest.approx(math.log(1000))
    with pytest.raises(ValueError):
        RunningQuantileDifficulty(n_bins=4)        # neither h_max nor vocab_size


def test_running_quantile_all_invalid_is_zero_and_finite():
    rq = RunningQuantileDifficulty(n_bins=8, h_max=2.0)
    u = rq(t(0.3, 1.0), b(F, F))
    assert torch.equal(u, t(0.0, 0.0)) and rq.total == 0
    rq(t(0.3, 1.0), b(T, T))
    u = rq(t(0.3, 1.0), b(F, F))
    assert torch.equal(u, t(0.0, 0.0)) and rq.total == 2


def test_running_quantile_state_round_trip():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(64, generator=g) * 3, torch.rand(64, generator=g) > 0.2) for _ in range(6)]
    a = RunningQuantileDifficulty(n_bins=32, vocab_size=50)
    for H, v in batches[:3]:
        a(H, v)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    restored = RunningQuantileDifficulty(n_bins=32, vocab_size=50)
    restored.load_state_dict(torch.load(buf))
    for H, v in batches[3:]:
        assert torch.equal(a(H, v), restored(H, v))
    with pytest.raises(ValueError):
        RunningQuantileDifficulty(n_bins=16, vocab_size=50).load_state_dict(a.state_dict())


# ---------------------------------------------------------------- registry


def test_registry_common_interface():
    H, v = t(0.1, 0.5, 0.5, 2.0), b(T, T, T, F)
    ctx = PolicyContext(vocab_size=8)
    rank, norm = DIFFICULTIES["rank"]().build(ctx), DIFFICULTIES["normalized"]().build(ctx)
    assert isinstance(rank, RankDifficulty) and isinstance(norm, NormalizedDifficulty)
    assert torch.equal(rank(H, v), rank_difficulty(H, v))
    assert torch.equal(norm(H, v), normalized_difficulty(H, v, 8))
    stats = StepStats(v, 0.0, {teacher_entropy(1.0): H})
    for pol in (rank, norm):
        assert pol.needs == {teacher_entropy(1.0)} and pol.provides == DIFFICULTY
        assert torch.equal(pol.of(stats), pol(H, v))
        assert pol.state_dict() == {}
        pol.load_state_dict({})


def test_registry_errors_list_valid_names():
    with pytest.raises(KeyError, match="rank, normalized, running_quantile"):
        DIFFICULTIES["entropy"]
