"""The sampled teacher cache's estimators (losses.sampled): unbiased in loss and gradient, exact without a tail.

Unbiasedness is tested as what it means: the average of the estimator over R independent draws converges
to the live full-vocabulary value, within a tolerance that follows from R (the replicates' own standard
error). The same check applied to an estimator with a broken importance weight must fail, or it would
not be a check.
"""

from __future__ import annotations

import math

import pytest
import torch

import egad_cli.losses.sampled as sampled_module
from egad_cli.config.policies import LOSSES
from egad_cli.losses.cached import DEFAULT_EXPONENTS, tail_of
from egad_cli.losses.chunked import chunked_distill_loss, entropy_at
from egad_cli.losses.divergences import entropy, forward_kl, hellinger
from egad_cli.losses.sampled import draw_from_tail, per_entry, sampled_from_logp

pytestmark = pytest.mark.numerics

V, TOKENS = 48, 4
PER_ENTRY = [name for name in LOSSES.names() if LOSSES[name].PER_ENTRY]


def divergence(name: str):
    return LOSSES[name]().divergence()


def teacher_student(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits with a peaked head and a long tail, and a student that is near but not equal."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(TOKENS, V, generator=g) * 2.5
    s = t * 0.6 + torch.randn(TOKENS, V, generator=g)
    return t, s


def replicated_estimates(t: torch.Tensor, s: torch.Tensor, fn, tau_value: float, k: int, draws: int, reps: int,
                         seed: int = 1, draw_exponent: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-draw losses [R, TOKENS], per-draw gradients w.r.t. the student logits [R, TOKENS, V]): the
    tokens tiled R times, each copy with its own draws."""
    logp = torch.log_softmax(t, dim=-1).repeat(reps, 1)  # [R·T, V]
    g = torch.Generator().manual_seed(seed)
    rows = sampled_from_logp(logp, k, torch.rand(logp.shape[0], draws, generator=g), DEFAULT_EXPONENTS, draw_exponent)
    z = s.repeat(reps, 1).requires_grad_(True)
    est = rows.divergence(z, torch.full((logp.shape[0],), tau_value), fn)  # [R·T]
    (grad,) = torch.autograd.grad(est.sum(), z)
    return est.detach().view(reps, TOKENS), grad.view(reps, TOKENS, V)


def live(t: torch.Tensor, s: torch.Tensor, fn, tau_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    z = s.clone().requires_grad_(True)
    value = fn(torch.log_softmax(t / tau_value, dim=-1), torch.log_softmax(z / tau_value, dim=-1))  # [T]
    (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad


def check_converges(est: torch.Tensor, grads: torch.Tensor, want: torch.Tensor, want_grad: torch.Tensor) -> None:
    """The mean over R draws is within 4.5 standard errors of the live value for each token's loss, and the
    mean gradient's distance to the live one is within 3× its expected size under unbiasedness,
    sqrt(Σ var / R) (the squared distance of an unbiased mean has expectation Σ var / R); 1e-5 of the
    value's scale absorbs fp32 rounding where the variance is ~0."""
    reps = est.shape[0]
    se = est.std(dim=0) / math.sqrt(reps)  # [T]
    assert ((est.mean(dim=0) - want).abs() <= 4.5 * se + 1e-5 * want.abs().clamp(min=1e-3)).all(), \
        (est.mean(dim=0), want, se)
    expected = math.sqrt(float(grads.var(dim=0).sum()) / reps)
    distance = float((grads.mean(dim=0) - want_grad).norm())
    assert distance <= 3 * expected + 1e-5 * float(want_grad.norm()), (distance, expected)


@pytest.mark.parametrize("tau_value", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("name", PER_ENTRY)
def test_the_mean_over_draws_converges_to_the_live_loss_and_gradient(name, tau_value):
    t, s = teacher_student()
    fn = divergence(name)
    est, grads = replicated_estimates(t, s, fn, tau_value, k=2, draws=6, reps=3000)
    check_converges(est, grads, *live(t, s, fn, tau_value))


@pytest.mark.parametrize("tau_value", [1.0, 2.0])
@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl"])
def test_draws_at_another_temperature_stay_unbiased(name, tau_value):
    """draw_temperature=2: the draws follow p^(1/2) on the tail; the weights use that proposal's normaliser."""
    t, s = teacher_student()
    fn = divergence(name)
    est, grads = replicated_estimates(t, s, fn, tau_value, k=2, draws=6, reps=3000, draw_exponent=0.5)
    check_converges(est, grads, *live(t, s, fn, tau_value))


@pytest.mark.parametrize("broken", ["rare-id approximation", "forgets the tail mass"])
def test_a_broken_importance_weight_fails_the_same_check(monkeypatch, broken):
    """Two plausible slips in the weight 1 / π: π ≈ N·r (right only for rare ids), and r = p instead of
    p / S(1) (the head's mass forgotten). The convergence check must see each."""
    right = sampled_module.importance_weights

    def wrong(rows):
        one = int(torch.nonzero(rows.head.exponents == 1.0)[0])
        log_r = rows.sample_logp - rows.head.log_tail[:, one, None]
        if broken == "rare-id approximation":
            pi = (rows.draws * log_r.exp()).clamp(max=1.0)
        else:
            pi = -torch.expm1(rows.draws * torch.log1p(-rows.sample_logp.exp().clamp(max=1.0)))
        return torch.where(right(rows) > 0, 1.0 / pi, 0.0)

    t, s = teacher_student()
    fn = divergence("forward_kl")
    monkeypatch.setattr(sampled_module, "importance_weights", wrong)
    est, grads = replicated_estimates(t, s, fn, 1.0, k=2, draws=6, reps=3000)
    with pytest.raises(AssertionError):
        check_converges(est, grads, *live(t, s, fn, 1.0))


def test_the_counts_estimator_is_unbiased_too():
    """Hansen-Hurwitz (c / N / r, the paper's form) converges as well as Horvitz-Thompson (egad's) on the
    same draws (which has the smaller variance depends on the distribution: bench/cache_accuracy.py)."""
    t, s = teacher_student()
    fn = divergence("forward_kl")
    logp = torch.log_softmax(t, dim=-1).repeat(3000, 1)
    rows = sampled_from_logp(logp, 2, torch.rand(logp.shape[0], 6, generator=torch.Generator().manual_seed(3)),
                             DEFAULT_EXPONENTS)
    z = s.repeat(3000, 1)
    ht = rows.divergence(z, torch.ones(logp.shape[0]), fn).view(3000, TOKENS)
    one = int(torch.nonzero(rows.head.exponents == 1.0)[0])
    rows.weights = rows.sample_counts / rows.draws * torch.exp(rows.head.log_tail[:, one, None] - rows.sample_logp)
    hh = rows.divergence(z, torch.ones(logp.shape[0]), fn).view(3000, TOKENS)
    want, _ = live(t, s, fn, 1.0)
    for est in (ht, hh):
        assert ((est.mean(0) - want).abs() <= 4.5 * est.std(0) / math.sqrt(3000)).all()


@pytest.mark.parametrize("name", PER_ENTRY)
def test_an_empty_tail_is_the_live_loss(name):
    """k = V: nothing is drawn and every term is exact (value and gradient to fp32 rounding)."""
    t, s = teacher_student(seed=2)
    fn = divergence(name)
    for tau_value in (0.5, 1.0, 2.0):
        rows = sampled_from_logp(torch.log_softmax(t, dim=-1), V, torch.rand(TOKENS, 8), DEFAULT_EXPONENTS)
        assert (rows.sample_counts == 0).all()
        z = s.clone().requires_grad_(True)
        got = rows.divergence(z, torch.full((TOKENS,), tau_value), fn)
        (g,) = torch.autograd.grad(got.sum(), z)
        want, want_grad = live(t, s, fn, tau_value)
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, want_grad, rtol=1e-4, atol=1e-6)


def test_the_chunked_loss_takes_sampled_rows_like_any_teacher():
    """chunked_distill_loss(cached=TeacherSampled) = Σ coef τ² D̂, the estimator's own value, for any chunking."""
    t, s_hidden = torch.randn(10, V) * 2, torch.randn(10, 16)
    head = torch.randn(V, 16) * 0.3
    rows = sampled_from_logp(torch.log_softmax(t, -1), 3, torch.rand(10, 5), DEFAULT_EXPONENTS)
    tau, coef = torch.rand(10) + 0.5, torch.rand(10)
    want = (coef * tau**2 * rows.divergence(s_hidden @ head.T, tau, forward_kl)).sum()
    for chunk in (3, 10):
        got, _ = chunked_distill_loss(s_hidden, head, None, None, tau, coef, divergence=forward_kl, chunk_size=chunk,
                                      cached=rows)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES.names())
def test_the_per_entry_flag_says_whether_the_divergence_sums_its_entries(name):
    t, s = teacher_student(seed=4)
    fn = divergence(name)
    t_logp, s_logp = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    summed = per_entry(fn, t_logp, s_logp).sum(dim=-1)
    if LOSSES[name].PER_ENTRY:
        torch.testing.assert_close(summed, fn(t_logp, s_logp), rtol=1e-5, atol=1e-6)
    else:  # refused by a sampled cache: it must really not decompose
        assert not torch.allclose(summed, fn(t_logp, s_logp), rtol=1e-3)


@pytest.mark.parametrize("name", PER_ENTRY)
def test_the_teacher_weighted_flag_says_whether_terms_vanish_with_the_teacher(name):
    """TEACHER_WEIGHTED (no warning from a sampled cache): ψ(log p, log q) → 0 as p → 0 for any student q."""
    s_logp = torch.log_softmax(torch.randn(1, V), dim=-1)
    tiny = per_entry(divergence(name), torch.full_like(s_logp, -60.0), s_logp).abs().max()  # p = e^-60
    assert (float(tiny) < 1e-20) == LOSSES[name].TEACHER_WEIGHTED, float(tiny)


def test_draws_follow_the_tail_and_never_the_head():
    logp = torch.log_softmax(torch.randn(1, V) * 2, dim=-1).repeat(4000, 1)
    head, tail = tail_of(logp, 3)
    ids, counts = draw_from_tail(tail, torch.rand(4000, 7, generator=torch.Generator().manual_seed(5)))
    assert (counts.sum(dim=-1) == 7).all()
    for row_ids, row_counts in zip(ids[:50], counts[:50]):
        drawn = row_ids[row_counts > 0]
        assert drawn.unique().numel() == drawn.numel()  # unique ids, counts carry the repeats
        assert not set(drawn.tolist()) & set(head.ids[0].tolist())
    freq = torch.zeros(V).index_add_(0, ids.flatten(), counts.flatten().float()) / (4000 * 7)  # [V]
    r = tail[0] / tail[0].sum()
    se = (r * (1 - r) / (4000 * 7)).sqrt()
    assert ((freq - r).abs() <= 5 * se + 1e-6).all()


def test_the_hellinger_estimate_is_unbiased_in_its_sum():
    """AdaKD's difficulty: the Bhattacharyya sum Σ √(p q) is estimated without bias; √(1 − BC) then follows."""
    t, s = teacher_student(seed=6)
    logp = torch.log_softmax(t, -1).repeat(3000, 1)
    rows = sampled_from_logp(logp, 2, torch.rand(logp.shape[0], 6, generator=torch.Generator().manual_seed(7)),
                             DEFAULT_EXPONENTS)
    bc = rows.bhattacharyya(s.repeat(3000, 1)).view(3000, TOKENS)
    want = 1 - hellinger(torch.log_softmax(t, -1), torch.log_softmax(s, -1)).square()
    assert ((bc.mean(0) - want).abs() <= 4.5 * bc.std(0) / math.sqrt(3000) + 1e-6).all()


@pytest.mark.parametrize("temp", [1.0, 2.0, 0.5])
def test_entropy_at_from_log_probabilities_equals_from_logits(temp):
    """egad cache normalises once and reads every entropy from the log-probabilities (normalized=True)."""
    logits = torch.randn(6, V) * 3
    want = entropy(torch.log_softmax(logits / temp, dim=-1))
    got = entropy_at(torch.log_softmax(logits, dim=-1), temp, normalized=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def coarse_grained(logp: torch.Tensor, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Naive reference: log-probabilities [N, P + 1] of logp [N, V] on the distinct valid ids and the rest."""
    keep = torch.zeros_like(logp, dtype=torch.bool)
    for n in range(logp.shape[0]):
        keep[n, ids[n][valid[n]]] = True
    at = torch.where(valid, logp.gather(-1, ids), -torch.inf)
    rest = torch.where(keep, -torch.inf, logp).logsumexp(dim=-1, keepdim=True)
    return torch.cat([at, rest], dim=-1)


@pytest.mark.parametrize("tau_value", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("name", [n for n in PER_ENTRY if not LOSSES[n].TEACHER_WEIGHTED])
def test_the_bucketed_view_is_the_divergence_on_the_stored_ids_and_one_bucket(name, tau_value):
    """Reverse-KL-type losses read a sampled cache as a top-k cache reads its head: the head and the drawn
    ids exactly, the rest of the tail as one bucket. Against the naive coarse-graining of both full
    distributions onto that partition (τ on the grid, so exact; fp32 throughout: rtol 1e-4), value and
    gradient; a lower bound of the full divergence for the KL family (data processing)."""
    t, s = teacher_student(seed=3)
    logp = torch.log_softmax(t.double(), dim=-1).float()
    rows = sampled_from_logp(logp, 3, torch.rand(TOKENS, 6, generator=torch.Generator().manual_seed(4)),
                             DEFAULT_EXPONENTS)
    view = rows.bucketed()
    assert view.valid.shape == view.ids.shape and bool((~view.valid).any())  # some draws repeat: empty slots
    tau = torch.full((TOKENS,), tau_value)
    fn = divergence(name)
    z = s.clone().requires_grad_(True)
    got = view.divergence(z, tau, fn)
    (got_grad,) = torch.autograd.grad(got.sum(), z)
    zr = s.clone().requires_grad_(True)
    want = fn(coarse_grained(torch.log_softmax(t / tau_value, dim=-1), view.ids, view.valid),
              coarse_grained(torch.log_softmax(zr / tau_value, dim=-1), view.ids, view.valid))
    (want_grad,) = torch.autograd.grad(want.sum(), zr)
    torch.testing.assert_close(got, want.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6)
    if "kl" in name:
        assert (got <= live(t, s, fn, tau_value)[0] + 1e-6).all()


def test_the_bucketed_view_of_an_empty_tail_is_the_live_loss():
    """k = V: no draws at all (every sample slot empty); the view is the whole distribution."""
    t, s = teacher_student(seed=5)
    rows = sampled_from_logp(torch.log_softmax(t, dim=-1), V, torch.rand(TOKENS, 4), DEFAULT_EXPONENTS)
    view = rows.bucketed()
    assert not view.valid[:, V:].any()
    fn = divergence("reverse_kl")
    got = view.divergence(s, torch.ones(TOKENS), fn)
    torch.testing.assert_close(got, live(t, s, fn, 1.0)[0], rtol=1e-5, atol=1e-6)
