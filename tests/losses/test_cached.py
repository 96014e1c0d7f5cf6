"""Divergences against a cached (top-k + tail bucket) teacher: exact when k = V, exact temperature on the
top-k, the tail's mass accounted for, and a lower bound of the full KL otherwise."""

from __future__ import annotations

import pytest
import torch
from conftest import divergence

from egad_cli.config.policies import LOSSES
from egad_cli.losses.cached import cached_divergence, student_buckets, teacher_buckets, topk_from_logits

pytestmark = pytest.mark.numerics  # two computations of the same math: .ci/run reruns these under AVX2 kernels

N, V = 12, 40


def logits(seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(N, V, generator=g)


TAU = torch.tensor([0.5, 1.0, 2.0, 0.75, 1.5, 1.0, 0.5, 2.0, 1.25, 1.0, 0.6, 3.0])  # per token, [N]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_k_equal_to_the_vocabulary_reproduces_the_live_loss_and_gradient(name):
    fn = divergence(name, beta=0.3, alpha=0.2)
    t, s = logits(0), logits(1).requires_grad_(True)
    top = topk_from_logits(t, V)
    got = cached_divergence(top, s, TAU, fn)
    want = fn(torch.log_softmax(t / TAU[:, None], -1), torch.log_softmax(s / TAU[:, None], -1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    (g_got,) = torch.autograd.grad(got.sum(), s)
    (g_want,) = torch.autograd.grad(want.sum(), s)
    torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6)


def test_temperature_is_exact_on_the_top_k_at_grid_points_and_the_buckets_sum_to_one():
    t = logits(2)
    top = topk_from_logits(t, 8)
    for tau in (0.5, 1.0, 2.0):  # exponents 2, 1, 0.5 are on the default grid
        taus = torch.full((N,), tau)
        buckets = teacher_buckets(top, taus)  # [N, 9]
        full = torch.log_softmax(t / tau, -1)
        torch.testing.assert_close(buckets[:, :-1], full.gather(1, top.ids), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(buckets.exp().sum(-1), torch.ones(N), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(student_buckets(t, top.ids, taus).exp().sum(-1), torch.ones(N))


def test_between_grid_points_the_tail_is_close():
    t = logits(3)
    top = topk_from_logits(t, 8)
    taus = torch.full((N,), 1 / 1.25)  # a = 1.25, between the grid's 1.0 and 1.5
    got = teacher_buckets(top, taus)[:, -1].exp()
    want = 1 - torch.softmax(t / taus[:, None], -1).gather(1, top.ids).sum(-1)
    assert ((got - want).abs() / want).max() < 0.05


def test_the_bucketed_kl_is_a_lower_bound_and_the_bucket_matters():
    t, s = logits(4, scale=1.0), logits(5, scale=1.0)  # flat distributions: a heavy tail
    tau = torch.ones(N)
    full = divergence("forward_kl")(torch.log_softmax(t, -1), torch.log_softmax(s, -1))
    for k in (4, 16):
        top = topk_from_logits(t, k)
        bucketed = cached_divergence(top, s, tau, divergence("forward_kl"))
        assert (bucketed <= full + 1e-6).all()
        # what a truncated KL without the tail would give (teacher and student renormalised on the top-k)
        t_top = torch.log_softmax(t.gather(1, top.ids), -1)
        s_top = torch.log_softmax(s.gather(1, top.ids), -1)
        truncated = divergence("forward_kl")(t_top, s_top)
        assert (bucketed - full).abs().mean() < (truncated - full).abs().mean()


def test_the_cached_form_leaves_no_reference_cycles():
    """Vocabulary-sized temporaries must be freed when the call returns, not when the cyclic GC happens to
    run (a cycle holding them made `egad cache` grow by gigabytes per shard)."""
    import gc

    gc.collect()
    gc.disable()
    try:
        topk_from_logits(logits(7), 8)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_split_tail_power_sums_and_entropies_equal_a_float64_reference():
    """egad cache reads the tail sums and the entropies at T = 1/b (b on POWER_BASIS) off one Gram product of
    the powers of the tail; against the plain float64 sums. Tolerance: a float32 sum of V positive terms
    is off by at most V · eps relative (any order), i.e. V · eps absolute in log S and in the moments' H."""
    from egad_cli.losses.cached import DEFAULT_EXPONENTS, POWER_BASIS, split_tail
    from egad_cli.losses.divergences import entropy

    v = 1000
    logp = torch.log_softmax(4.0 * torch.randn(9, v, generator=torch.Generator().manual_seed(3),
                                                dtype=torch.float64), dim=-1)
    temps = (1.0, 2.0, 0.5, 4.0, 3.0)
    split = split_tail(logp.float(), 4, DEFAULT_EXPONENTS, entropy_temps=temps)
    tol = v * torch.finfo(torch.float32).eps
    tail = torch.ones_like(logp, dtype=torch.bool).scatter_(-1, split.head.ids, False)
    for i, a in enumerate(DEFAULT_EXPONENTS):
        want = torch.where(tail, logp * a, -torch.inf).logsumexp(dim=-1)
        torch.testing.assert_close(split.head.log_tail[:, i].double(), want, rtol=0, atol=tol)
    assert sorted(split.entropies) == sorted(t for t in temps if 1 / t in POWER_BASIS)  # T = 3 is off the basis
    for t, h in split.entropies.items():
        want = entropy(torch.log_softmax(logp / t, dim=-1))
        torch.testing.assert_close(h.double(), want, rtol=0, atol=tol * float(want.abs().max()))


def test_entropy_at_gives_masked_ids_no_mass():
    """A logit of -inf (an id masked out) takes no part: 0 · log 0 = 0, the entropy of the rest."""
    from egad_cli.losses.chunked import entropy_at
    from egad_cli.losses.divergences import entropy

    x = logits(5)
    masked = x.clone()
    masked[:, V // 2:] = -torch.inf
    for temp in (1.0, 2.0):
        want = entropy(torch.log_softmax(x[:, :V // 2] / temp, dim=-1))
        torch.testing.assert_close(entropy_at(masked.clone(), temp), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(entropy_at(masked.clone(), temp, consume=True), want, rtol=1e-5, atol=1e-6)


def test_split_tail_gram_without_blas_and_masked_ids():
    """The accelerator path (the Gram product pair by pair, no TF32 matmul) equals the CPU's batched matmul;
    a masked id (log p = −inf) in the tail takes no part in the sums or the entropies (no 0 · −inf)."""
    from egad_cli.losses.cached import DEFAULT_EXPONENTS, _gram, split_tail
    from egad_cli.losses.divergences import entropy

    work = torch.rand(3, 5, 200, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_gram(work, blas=False), _gram(work, blas=True), rtol=1e-5, atol=1e-6)
    x = logits(9)
    x[:, 7] = -torch.inf
    logp = torch.log_softmax(x, dim=-1)
    split = split_tail(logp, 3, DEFAULT_EXPONENTS, entropy_temps=(1.0, 2.0))
    assert torch.isfinite(split.head.log_tail).all()
    for t, h in split.entropies.items():
        torch.testing.assert_close(h, entropy(torch.log_softmax(x / t, dim=-1)), rtol=1e-5, atol=1e-5)
