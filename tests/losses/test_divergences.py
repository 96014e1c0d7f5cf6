"""Divergences: values against hand-written formulas, and the identities of DESIGN §3."""

import functools
import math

import pytest
import torch
from conftest import divergence

from egad_cli.config.policies import LOSSES
from egad_cli.losses.divergences import (
    entropy,
    entropy_gated_kl,
    forward_kl,
    hellinger,
    jsd,
    reverse_kl,
    skew_fkl,
    skew_rkl,
    tvd,
)

pytestmark = pytest.mark.numerics  # two computations of the same math: .ci/run reruns these under AVX2 kernels

NAMES = sorted(LOSSES)


def _logps(n=6, v=9, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    t = (scale * torch.randn(n, v, generator=g, dtype=torch.float64)).log_softmax(-1)
    s = (scale * torch.randn(n, v, generator=g, dtype=torch.float64)).log_softmax(-1)
    return t, s


# ---- naive references: probabilities and plain logs, written independently of the module


def _kl_naive(a, b):
    return (a * torch.log(a / b)).sum(-1)


def _naive(name, p, q, beta, alpha):
    if name == "forward_kl":
        return _kl_naive(p, q)
    if name == "reverse_kl":
        return _kl_naive(q, p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * _kl_naive(p, m) + (1 - beta) * _kl_naive(q, m)
    if name == "skew_fkl":
        return _kl_naive(p, alpha * p + (1 - alpha) * q)
    if name == "skew_rkl":
        return _kl_naive(q, alpha * q + (1 - alpha) * p)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "entropy_gated_kl":  # default threshold 1 nat, weight 1
        return _kl_naive(q, p) + (-(p * p.log()).sum(-1) > 1.0) * _kl_naive(p, q)
    raise AssertionError(name)


def test_registry_names_are_exactly_the_design_list():
    assert set(LOSSES) == {"forward_kl", "reverse_kl", "jsd", "skew_fkl", "skew_rkl", "tvd", "entropy_gated_kl"}


def test_unknown_name_lists_valid_choices():
    with pytest.raises(KeyError) as e:
        LOSSES["kl_forward"]
    for name in NAMES:
        assert name in str(e.value)
    bound = LOSSES["jsd"](beta=0.3).divergence()
    assert bound.func is jsd and bound.keywords == {"beta": 0.3}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta,alpha", [(0.5, 0.1), (0.2, 0.3), (0.9, 0.6)])
def test_value_matches_naive_formula(name, beta, alpha):
    t, s = _logps()
    got = divergence(name, beta, alpha)(t, s)
    want = _naive(name, t.exp(), s.exp(), beta, alpha)
    assert got.shape == (t.shape[0],)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_divergence_of_a_distribution_with_itself_is_zero(name):
    t, _ = _logps()
    torch.testing.assert_close(divergence(name)(t, t.clone()), torch.zeros(t.shape[0], dtype=t.dtype))


@pytest.mark.parametrize("name", NAMES)
def test_non_negative(name):
    t, s = _logps(n=64, v=17, seed=3, scale=4.0)
    assert (divergence(name)(t, s) >= -1e-12).all()


def test_forward_kl_is_reverse_kl_with_roles_swapped():
    t, s = _logps()
    torch.testing.assert_close(forward_kl(t, s), reverse_kl(s, t))


def test_jsd_limits_recover_the_kls():
    """JSD_β/β → KL(p‖q) as β → 0 and JSD_β/(1−β) → KL(q‖p) as β → 1; the error is O(ε)."""
    t, s = _logps()
    fkl, rkl = forward_kl(t, s), reverse_kl(t, s)
    for eps in (1e-4, 1e-6):
        torch.testing.assert_close(jsd(t, s, beta=eps) / eps, fkl, rtol=50 * eps, atol=50 * eps)
        torch.testing.assert_close(jsd(t, s, beta=1 - eps) / eps, rkl, rtol=50 * eps, atol=50 * eps)
    # the raw value itself vanishes near the endpoints ...
    assert jsd(t, s, beta=1e-6).abs().max() < 1e-4
    # ... so the exact endpoints are defined as the KLs (as in TRL)
    torch.testing.assert_close(jsd(t, s, beta=0.0), fkl)
    torch.testing.assert_close(jsd(t, s, beta=1.0), rkl)


def test_symmetric_jsd_is_symmetric_and_bounded_by_log2():
    t, s = _logps(scale=5.0)
    torch.testing.assert_close(jsd(t, s, beta=0.5), jsd(s, t, beta=0.5))
    assert (jsd(t, s, beta=0.5) <= math.log(2) + 1e-12).all()


def test_skew_at_alpha_zero_is_plain_kl():
    t, s = _logps()
    torch.testing.assert_close(skew_fkl(t, s, alpha=0.0), forward_kl(t, s))
    torch.testing.assert_close(skew_rkl(t, s, alpha=0.0), reverse_kl(t, s))
    torch.testing.assert_close(skew_fkl(t, s, alpha=1.0), torch.zeros(t.shape[0], dtype=t.dtype))


def test_out_of_range_parameters_are_refused():
    t, s = _logps()
    with pytest.raises(ValueError, match="beta"):
        jsd(t, s, beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        skew_fkl(t, s, alpha=-0.1)


def test_tvd_is_at_most_one():
    t, s = _logps(n=64, seed=5, scale=20.0)  # nearly disjoint one-hot-ish distributions
    d = tvd(t, s)
    assert (d <= 1 + 1e-12).all() and d.max() > 0.9


def test_entropy_matches_naive_and_bounds():
    t, _ = _logps()
    p = t.exp()
    torch.testing.assert_close(entropy(t), -(p * p.log()).sum(-1))
    uniform = torch.full((2, 9), -math.log(9), dtype=torch.float64)
    torch.testing.assert_close(entropy(uniform), torch.full((2,), math.log(9), dtype=torch.float64))


def test_hellinger_matches_naive_in_unit_interval_and_zero_on_identity():
    t, s = _logps(n=32, scale=6.0)
    want = torch.sqrt(1 - (t.exp() * s.exp()).sqrt().sum(-1))
    got = hellinger(t, s)
    torch.testing.assert_close(got, want)
    assert ((got >= 0) & (got <= 1)).all()
    assert hellinger(t, t.clone()).abs().max() < 1e-6  # sqrt of a rounding error
    # disjoint supports: distance exactly 1
    a = torch.tensor([[0.0, -math.inf]], dtype=torch.float64)
    b = torch.tensor([[-math.inf, 0.0]], dtype=torch.float64)
    assert hellinger(a, b).item() == 1.0


@pytest.mark.parametrize("name", NAMES)
def test_shared_masked_vocabulary_is_finite_and_ignored(name):
    """Entries with p = q = 0 (-inf log-probs, e.g. masked vocab) change nothing, grads stay finite."""
    t, s = _logps()
    t_m = torch.cat([t, torch.full((t.shape[0], 3), -math.inf, dtype=t.dtype)], dim=1).requires_grad_(True)
    s_m = torch.cat([s, torch.full((s.shape[0], 3), -math.inf, dtype=s.dtype)], dim=1).requires_grad_(True)
    got = divergence(name)(t_m, s_m)
    torch.testing.assert_close(got, divergence(name)(t, s))
    got.sum().backward()
    assert torch.isfinite(t_m.grad).all() and torch.isfinite(s_m.grad).all()


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "skew_fkl", "skew_rkl", "tvd"])
def test_teacher_zero_mass_entries_are_finite(name):
    """p(v) = 0 < q(v): every divergence but reverse KL (which is then +inf, correctly) stays finite."""
    g = torch.Generator().manual_seed(1)
    t_logits = torch.randn(4, 8, generator=g, dtype=torch.float64)
    t_logits[:, :2] = -math.inf
    t = t_logits.log_softmax(-1)
    s = torch.randn(4, 8, generator=g, dtype=torch.float64).log_softmax(-1).requires_grad_(True)
    d = divergence(name)(t, s)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d, _naive_masked(name, t.exp(), s.detach().exp()))
    d.sum().backward()
    assert torch.isfinite(s.grad).all()
    assert torch.isinf(reverse_kl(t, s.detach())).all()


def _naive_masked(name, p, q, beta=0.5, alpha=0.1):
    """Naive formulas with the 0 · log 0 = 0 convention made explicit."""

    def kl(a, b):
        return torch.where(a > 0, a * torch.log(a / b), torch.zeros_like(a)).sum(-1)

    if name == "forward_kl":
        return kl(p, q)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if name == "skew_fkl":
        return kl(p, alpha * p + (1 - alpha) * q)
    if name == "skew_rkl":
        return kl(q, alpha * q + (1 - alpha) * p)
    return 0.5 * (p - q).abs().sum(-1)


# ---- the analytic student gradients the chunked loss uses (losses.divergences.value_and_grad)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hp", [(0.3, 0.2), (0.0, 0.0), (1.0, 1.0)])
def test_analytic_gradient_matches_autograd(name, hp):
    """Every built-in divergence has one; same value to the last bit, gradient = autograd's, with
    zero-mass entries (0 · log 0 = 0 must give 0, not nan; q > 0 = p makes reverse KL's +inf)."""
    from egad_cli.losses.divergences import value_and_grad

    beta, alpha = hp
    fn = {"jsd": lambda: functools.partial(jsd, beta=beta),
          "skew_fkl": lambda: functools.partial(skew_fkl, alpha=alpha),
          "skew_rkl": lambda: functools.partial(skew_rkl, alpha=alpha)}.get(name, lambda: divergence(name))()
    t, s = _logps(n=5, v=11, seed=3)
    t[0, [2, 5]] = -math.inf  # the teacher has no mass there
    t[1, 3] = s[1, 3] = -math.inf  # neither has
    t, s = t.log_softmax(-1), s.log_softmax(-1)
    s = s.requires_grad_(True)
    want = fn(t, s)
    # skew_fkl at α = 1 is KL(p‖p) = 0, which does not depend on q at all
    want_g = torch.autograd.grad(want.sum(), s)[0] if want.requires_grad else torch.zeros_like(s)
    analytic = value_and_grad(fn)
    assert analytic is not None
    s_before = s.detach().clone()
    got, got_g = analytic(t.clone(), s.detach())
    assert torch.equal(s.detach(), s_before), "s_logp is read only"
    assert torch.equal(got, want.detach())
    assert not got_g.isnan().any()
    torch.testing.assert_close(got_g, want_g, rtol=1e-10, atol=1e-12)  # infs where autograd's are


@pytest.mark.parametrize("name", NAMES)
def test_a_nan_teacher_row_stays_nan_in_the_analytic_value(name):
    """0 · log 0 = 0 is for masked ids only: a broken teacher (nan logits) must give a nan loss, which the
    trainer reports as a non-finite step, never a quiet 0 (forward KL fixes masked rows after its sum)."""
    from egad_cli.losses.divergences import value_and_grad

    t, s = _logps(n=4, v=11, seed=7)
    t[0, [2, 5]] = -math.inf  # a masked row beside the broken one
    t[2] = math.nan
    t, s = t.log_softmax(-1), s.log_softmax(-1)
    got, _ = value_and_grad(divergence(name))(t.clone(), s)
    assert got[2].isnan()
    assert not got[[0, 1, 3]].isnan().any()  # row 0 may be +inf (reverse KL where p = 0 < q), not nan


def test_entropy_gated_kl_is_reverse_kl_plus_forward_kl_on_uncertain_teacher_rows():
    """EOPD: below the threshold the token gets reverse KL only, above it reverse + weight · forward KL;
    the gate follows the teacher's entropy alone. Thresholds at the ends give the two pure cases."""
    t, s = _logps(n=8, v=9, seed=5)
    h = entropy(t)
    threshold = float(h.median())
    got = entropy_gated_kl(t, s, threshold=threshold, fkl_weight=0.5)
    above = h > threshold
    assert 0 < int(above.sum()) < len(h)
    torch.testing.assert_close(got[~above], reverse_kl(t, s)[~above], rtol=0, atol=0)
    torch.testing.assert_close(got[above], (reverse_kl(t, s) + 0.5 * forward_kl(t, s))[above])
    torch.testing.assert_close(entropy_gated_kl(t, s, threshold=math.inf), reverse_kl(t, s), rtol=0, atol=0)
    torch.testing.assert_close(entropy_gated_kl(t, s, threshold=-1.0), reverse_kl(t, s) + forward_kl(t, s))
    # the student never moves the gate: only log q carries a gradient, and it is rkl's + c · fkl's
    s = s.clone().requires_grad_(True)
    g = torch.autograd.grad(entropy_gated_kl(t, s, threshold=threshold).sum(), s)[0]
    g_r = torch.autograd.grad(reverse_kl(t, s).sum(), s)[0]
    g_f = torch.autograd.grad(forward_kl(t, s).sum(), s)[0]
    torch.testing.assert_close(g, g_r + above[:, None] * g_f)


def test_a_divergence_without_analytic_gradient_has_none():
    from egad_cli.losses.divergences import value_and_grad

    assert value_and_grad(lambda t, s: forward_kl(t, s) * 2) is None
