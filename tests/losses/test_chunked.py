"""Chunked loss/stats against a naive full-vocabulary fp32 reference (DESIGN §3: chunked == unchunked)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import divergence

from egad_cli.config.policies import LOSSES
from egad_cli.losses.chunked import chunked_distill_loss, chunked_token_stats
from egad_cli.losses.divergences import entropy, forward_kl, jsd, reverse_kl, tvd

pytestmark = pytest.mark.numerics  # two computations of the same math: .ci/run reruns these under AVX2 kernels

NAMES = sorted(LOSSES)
N, V, DS, DT = 11, 37, 8, 12


def _problem(seed=0, with_inference_teacher=True):
    g = torch.Generator().manual_seed(seed)
    s_hidden = torch.randn(N, DS, generator=g).requires_grad_(True)
    s_head = (0.5 * torch.randn(V, DS, generator=g)).requires_grad_(True)
    t_h, t_w = torch.randn(N, DT, generator=g), 0.5 * torch.randn(V, DT, generator=g)
    if with_inference_teacher:
        with torch.inference_mode():  # how the engine runs the teacher
            t_hidden, t_head = t_h * 1.0, t_w * 1.0
        assert t_hidden.is_inference()
    else:
        t_hidden, t_head = t_h, t_w
    tau = 0.5 + 1.5 * torch.rand(N, generator=g)  # non-uniform, in [0.5, 2]
    coef = torch.rand(N, generator=g) * 2
    coef[[0, 4, 5, 10]] = 0.0  # masked tokens (incl. the first and last)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[[1, 4]] = -100
    ce_coef = torch.rand(N, generator=g)
    ce_coef[[1, 4, 7]] = 0.0
    return s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef


def _naive(s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef, name, beta, alpha):
    """Full [N, V] fp32 logits for both models, log_softmax, τ, τ², coef, sum."""
    t_logits = t_hidden.clone().float() @ t_head.clone().float().T  # [N, V]
    s_logits = s_hidden.float() @ s_head.float().T  # [N, V]
    t_logp = torch.log_softmax(t_logits / tau[:, None], dim=-1)
    s_logp = torch.log_softmax(s_logits / tau[:, None], dim=-1)
    div = (coef * tau**2 * divergence(name, beta, alpha)(t_logp, s_logp)).sum()
    ce = (ce_coef * F.cross_entropy(s_logits, labels, reduction="none", ignore_index=-100)).sum()
    return div, ce


def _grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk_size", [N, 3])
def test_value_and_grads_match_naive(name, chunk_size):
    s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef = _problem()
    beta, alpha = 0.3, 0.2
    div, ce = chunked_distill_loss(
        s_hidden,
        s_head,
        t_hidden,
        t_head,
        tau,
        coef,
        divergence=divergence(name, beta, alpha),
        labels=labels,
        ce_coef=ce_coef,
        chunk_size=chunk_size,
    )
    ref_div, ref_ce = _naive(
        s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef, name, beta, alpha
    )
    assert div.dtype == ce.dtype == torch.float32 and div.shape == ce.shape == ()
    torch.testing.assert_close(div, ref_div, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce, ref_ce, rtol=1e-5, atol=1e-5)

    # Different upstream weights on the two outputs check that their gradients are kept apart.
    got = _grads(0.7 * div + 1.3 * ce, s_hidden, s_head)
    want = _grads(0.7 * ref_div + 1.3 * ref_ce, s_hidden, s_head)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    # masked rows (coef 0 and ce_coef 0) get exactly no gradient
    assert (got[0][4] == 0).all()


@pytest.mark.parametrize("chunk_size", [N, 3])
def test_without_labels_ce_is_zero_and_div_grads_match(chunk_size):
    s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef = _problem(seed=1)
    div, ce = chunked_distill_loss(
        s_hidden, s_head, t_hidden, t_head, tau, coef, divergence=reverse_kl, chunk_size=chunk_size
    )
    assert ce.item() == 0.0
    ref_div, _ = _naive(
        s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef, "reverse_kl", 0.5, 0.1
    )
    torch.testing.assert_close(div, ref_div, rtol=1e-5, atol=1e-5)
    for g, w in zip(_grads(div, s_hidden, s_head), _grads(ref_div, s_hidden, s_head)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("unit_tau", [False, True])
def test_a_divergence_without_analytic_gradient_takes_the_autograd_path(unit_tau):
    """A user-added divergence (no entry in divergences.value_and_grad) still trains, by autograd;
    and τ ≡ 1 (no division by τ) gives the naive value too, on both paths."""
    s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef = _problem(seed=5)
    if unit_tau:
        tau = torch.ones(N)

    def doubled_kl(t_logp, s_logp):
        return 2.0 * forward_kl(t_logp, s_logp)

    kw = {"labels": labels, "ce_coef": ce_coef, "chunk_size": 4}
    custom, ce = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, divergence=doubled_kl, **kw)
    builtin, _ = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, divergence=forward_kl, **kw)
    ref, ref_ce = _naive(s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef, "forward_kl", 0.5, 0.1)
    torch.testing.assert_close(custom, 2 * ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(builtin, ref, rtol=1e-5, atol=1e-5)
    want_custom = _grads(2 * ref + ref_ce, s_hidden, s_head)
    ref, _ = _naive(s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef, "forward_kl", 0.5, 0.1)
    for got, want in ((_grads(custom + ce, s_hidden, s_head), want_custom),
                      (_grads(builtin, s_hidden, s_head), _grads(ref, s_hidden, s_head))):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_kept_teacher_logits_give_the_same_loss():
    """t_logits (the stats pass's teacher logits, kept) replace the teacher's head matmul: same sums, same grads."""
    s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef = _problem(seed=6)
    kw = {"divergence": forward_kl, "labels": labels, "ce_coef": ce_coef, "chunk_size": 4}
    kept = chunked_token_stats(t_hidden, t_head, keep_teacher_logits=True, chunk_size=5)["teacher_logits"]
    assert kept.shape == (N, V)
    a = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, **kw)
    b = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, t_logits=kept, **kw)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    for g, w in zip(_grads(a[0] + a[1], s_hidden, s_head), _grads(b[0] + b[1], s_hidden, s_head)):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="t_logits"):
        chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, t_logits=kept[:, :-1], **kw)
    # handed over (consume_t_logits) with every row active, the chunks are views overwritten in place
    every = torch.rand(N) + 0.1
    a = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, every, **kw)
    handed = kept.clone()
    b = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, every, t_logits=handed, consume_t_logits=True,
                             **kw)
    assert not torch.equal(handed, kept)  # it was used as scratch
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    for g, w in zip(_grads(a[0] + a[1], s_hidden, s_head), _grads(b[0] + b[1], s_hidden, s_head)):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_fully_masked_gives_exact_zero_and_zero_grads():
    s_hidden, s_head, t_hidden, t_head, tau, _, labels, _ = _problem()
    zeros = torch.zeros(N)
    div, ce = chunked_distill_loss(
        s_hidden,
        s_head,
        t_hidden,
        t_head,
        tau,
        zeros,
        divergence=forward_kl,
        labels=labels,
        ce_coef=zeros,
        chunk_size=3,
    )
    assert div.item() == 0.0 and ce.item() == 0.0
    (div + ce).backward()
    for g in (s_hidden.grad, s_head.grad):
        assert torch.isfinite(g).all() and (g == 0).all()


def test_no_grad_path_gives_same_values():
    s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef = _problem(seed=2)
    kw = {"divergence": jsd, "labels": labels, "ce_coef": ce_coef, "chunk_size": 4}
    div, ce = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, **kw)
    with torch.no_grad():
        div0, ce0 = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, **kw)
    assert not div0.requires_grad
    torch.testing.assert_close(div0, div.detach())
    torch.testing.assert_close(ce0, ce.detach())


def test_sliced_padded_head_gets_gradient_only_in_real_rows():
    """The engine passes lm_head.weight[:V] when the embedding matrix is padded."""
    s_hidden, s_head, t_hidden, t_head, tau, coef, _, _ = _problem(seed=3)
    full = torch.cat([s_head.detach(), torch.randn(5, DS)]).requires_grad_(True)  # [V + 5, DS]
    div, _ = chunked_distill_loss(
        s_hidden, full[:V], t_hidden, t_head, tau, coef, divergence=tvd, chunk_size=3
    )
    div.backward()
    assert (full.grad[V:] == 0).all() and full.grad[:V].abs().sum() > 0


def test_bf16_inputs_are_close_to_fp32_and_grads_keep_dtype():
    s_hidden, s_head, t_hidden, t_head, tau, coef, _, _ = _problem(seed=4, with_inference_teacher=False)
    ref, _ = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, divergence=forward_kl)
    sh = s_hidden.detach().bfloat16().requires_grad_(True)
    sw = s_head.detach().bfloat16().requires_grad_(True)
    div, _ = chunked_distill_loss(
        sh, sw, t_hidden.bfloat16(), t_head.bfloat16(), tau, coef, divergence=forward_kl, chunk_size=3
    )
    assert div.dtype == torch.float32
    torch.testing.assert_close(div, ref.detach(), rtol=5e-2, atol=5e-2)
    div.backward()
    assert sh.grad.dtype == sw.grad.dtype == torch.bfloat16
    assert torch.isfinite(sh.grad.float()).all()


def test_bad_inputs_are_refused():
    s_hidden, s_head, t_hidden, t_head, tau, coef, labels, _ = _problem()
    with pytest.raises(ValueError, match="coef"):
        chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef[:-1], divergence=jsd)
    with pytest.raises(ValueError, match="together"):
        chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, divergence=jsd, labels=labels)


@pytest.mark.parametrize("chunk_size", [N, 3])
def test_token_stats_match_naive(chunk_size):
    s_hidden, s_head, t_hidden, t_head, _, _, labels, _ = _problem()
    stats = chunked_token_stats(
        t_hidden,
        t_head,
        s_hidden,
        s_head,
        teacher_entropy_temps=(1.0, 2.0),
        student_entropy_temps=(2.0,),
        hellinger=True,
        teacher_nll_labels=labels,
        chunk_size=chunk_size,
    )
    assert set(stats) == {
        "teacher_entropy@1",
        "teacher_entropy@2",
        "student_entropy@2",
        "hellinger",
        "teacher_nll",
    }
    t_logits = (t_hidden.clone() @ t_head.clone().T).double()  # [N, V]
    s_logits = (s_hidden.detach() @ s_head.detach().T).double()
    p1, p2, q2 = t_logits.softmax(-1), (t_logits / 2).softmax(-1), (s_logits / 2).softmax(-1)
    q1 = s_logits.softmax(-1)
    want = {
        "teacher_entropy@1": -(p1 * p1.log()).sum(-1),
        "teacher_entropy@2": -(p2 * p2.log()).sum(-1),
        "student_entropy@2": -(q2 * q2.log()).sum(-1),
        "hellinger": torch.sqrt(1 - (p1 * q1).sqrt().sum(-1)),
        "teacher_nll": F.cross_entropy(t_logits, labels, reduction="none", ignore_index=-100),
    }
    for key, w in want.items():
        assert stats[key].dtype == torch.float32 and stats[key].shape == (N,)
        torch.testing.assert_close(stats[key], w.float(), rtol=1e-5, atol=1e-5, msg=key)
    assert not any(t.requires_grad for t in stats.values())


def test_token_stats_teacher_only_and_missing_student():
    _, _, t_hidden, t_head, _, _, _, _ = _problem()
    stats = chunked_token_stats(t_hidden, t_head)
    assert list(stats) == ["teacher_entropy@1"]
    ref = entropy(torch.log_softmax(t_hidden.clone() @ t_head.clone().T, -1))
    torch.testing.assert_close(stats["teacher_entropy@1"], ref)
    with pytest.raises(ValueError, match="s_hidden"):
        chunked_token_stats(t_hidden, t_head, hellinger=True)


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl", "jsd"])
@pytest.mark.parametrize("chunk_size", [N, 3])
def test_a_zero_weight_row_beside_an_inf_gives_exactly_nothing(name, chunk_size):
    """Row 5 is active for CE only (coef 0); its teacher puts no mass on two ids, where reverse KL's gradient is
    +inf. The weights scale the head's [C, Ds] products, so that row's [C, V] gradient must be zeroed first: the
    values and gradients equal, bit for bit, those of the same problem with row 5's teacher finite."""
    s_hidden, s_head, t_hidden, t_head, tau, coef, labels, ce_coef = _problem(with_inference_teacher=False)
    assert coef[5] == 0 and ce_coef[5] != 0
    finite = t_hidden @ t_head.T  # [N, V], handed over as the kept logits
    masked = finite.clone()
    masked[5, [3, 8]] = float("-inf")

    def run(t_logits):
        div, ce = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, divergence=divergence(name),
                                       labels=labels, ce_coef=ce_coef, chunk_size=chunk_size, t_logits=t_logits)
        return (div, ce, *_grads(div + ce, s_hidden, s_head))

    want, got = run(finite.clone()), run(masked)
    assert all(x.isfinite().all() for x in got)
    for w, g in zip(want, got):
        assert torch.equal(w, g)
