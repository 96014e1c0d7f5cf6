"""Per-token divergences between a teacher distribution p and a student distribution q.

Every function takes LOG-probabilities (normally fp32, the output of ``log_softmax``), shaped
``[N, V]`` (N tokens, V vocabulary entries), and returns one value per token, ``[N]``. There is no
reduction and no temperature handling here: the caller divides the logits by the per-token
temperature τ_i before ``log_softmax`` and multiplies the result by τ_i² and the token weight
(see ``egad_cli.losses.chunked``). Keeping these functions pure makes them easy to test by
identities (D(p, p) = 0, forward_kl(p, q) = reverse_kl(q, p), the JSD limits, ...).

Numerical conventions:

* mixtures are formed in log space (``logaddexp``), never by exponentiating and adding;
* a teacher entry with p(v) = 0 (``t_logp = -inf``, e.g. a masked vocabulary entry) contributes
  0 to Σ p log(p / ·), i.e. 0 · log 0 = 0, with a finite value and finite gradients (the
  "double where" trick: the masked branch is fed safe inputs, not only masked at the output);
* if q(v) = 0 where p(v) > 0, KL(p‖q) is +inf, which is the correct value.

Every divergence has the signature ``fn(t_logp, s_logp, **its_hyperparameters) -> Tensor[N]``.
The ``loss=`` config group lists them (``egad_cli.config.policies.LOSSES``): each option's node
binds its hyperparameters and hands the function to the loss (``node.divergence()``).

Each built-in divergence also has an *analytic student gradient* (``value_and_grad``): the value and
g = ∂D/∂(log q) [N, V], written with in-place arithmetic. The chunked loss chains g through the
log-softmax and the temperature by hand (∂D/∂z = (g − q·Σg)/τ) instead of keeping autograd's
buffers: fewer vocabulary-sized temporaries and less time. A divergence without one (a new one
added by a user) still works: the loss falls back to autograd for it. ``tests/losses`` checks every
gradient against autograd.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "Divergence",
    "entropy",
    "entropy_from_moments",
    "entropy_gated_kl",
    "forward_kl",
    "hellinger",
    "jsd",
    "reverse_kl",
    "rowdot",
    "skew_fkl",
    "skew_rkl",
    "tvd",
    "value_and_grad",
]

Divergence = Callable[..., Tensor]


# --------------------------------------------------------------------------- helpers


def _kl(a_logp: Tensor, b_logp: Tensor) -> Tensor:
    """KL(a‖b) = Σ_v a(v) (log a(v) − log b(v)) per row, with 0 · log 0 = 0.

    a_logp, b_logp: [N, V] log-probs -> [N].
    """
    a = a_logp.exp()  # [N, V]
    support = a > 0  # [N, V]; exp underflow counts as "no mass" too
    # Double where: outside the support the difference may be (-inf) - (-inf) = nan; replace it
    # by 0 *before* the multiplication so neither the value nor the gradient sees a nan.
    diff = torch.where(support, a_logp - b_logp, torch.zeros_like(a_logp))  # [N, V]
    return (a * diff).sum(dim=-1)  # [N]


def _log_mix(a_logp: Tensor, b_logp: Tensor, w: float) -> Tensor:
    """log(w · a + (1 − w) · b) elementwise, in log space; w in [0, 1].

    a_logp, b_logp: [N, V] -> [N, V]. Entries where both a and b are 0 give -inf with a finite
    gradient (``logaddexp``'s own backward would produce nan there).
    """
    if w == 0.0:
        return b_logp
    if w == 1.0:
        return a_logp
    la = a_logp + math.log(w)  # [N, V]
    lb = b_logp + math.log1p(-w)  # [N, V]
    both_zero = torch.isneginf(la) & torch.isneginf(lb)  # [N, V]
    zero = torch.zeros_like(la)
    mixed = torch.logaddexp(torch.where(both_zero, zero, la), torch.where(both_zero, zero, lb))
    return torch.where(both_zero, torch.full_like(la, -math.inf), mixed)  # [N, V]


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


# --------------------------------------------------------------------------- divergences


def forward_kl(t_logp: Tensor, s_logp: Tensor) -> Tensor:
    """KL(p‖q): mass-covering; the classic KD loss (Hinton). [N, V] x2 -> [N]."""
    return _kl(t_logp, s_logp)


def reverse_kl(t_logp: Tensor, s_logp: Tensor) -> Tensor:
    """KL(q‖p): mode-seeking (MiniLLM, AdaKD's default). [N, V] x2 -> [N]."""
    return _kl(s_logp, t_logp)


def jsd(t_logp: Tensor, s_logp: Tensor, *, beta: float = 0.5) -> Tensor:
    """Generalised Jensen-Shannon divergence with weight β (TRL's ``generalized_jsd_loss`` convention).

    m = β·p + (1 − β)·q,  JSD_β = β·KL(p‖m) + (1 − β)·KL(q‖m).   [N, V] x2 -> [N]

    β = 0.5 is the symmetric JSD (bounded by log 2). The raw JSD_β vanishes at both endpoints
    (m becomes q or p), but to first order

        JSD_β / β       → KL(p‖q)  (forward KL)  as β → 0,
        JSD_β / (1 − β) → KL(q‖p)  (reverse KL)  as β → 1,

    because KL(q‖m) and KL(p‖m) are O(β²) and O((1 − β)²) there. This is the sense in which
    "β = 0 and β = 1 recover the two KLs in the limit" (tested numerically). At exactly β = 0 and
    β = 1 the raw value would be identically 0, a useless loss, so, as TRL does, those two values
    return forward_kl and reverse_kl respectively.
    """
    _check_unit_interval("jsd beta", beta)
    if beta == 0.0:
        return forward_kl(t_logp, s_logp)
    if beta == 1.0:
        return reverse_kl(t_logp, s_logp)
    m_logp = _log_mix(t_logp, s_logp, beta)  # [N, V]
    return beta * _kl(t_logp, m_logp) + (1.0 - beta) * _kl(s_logp, m_logp)  # [N]


def skew_fkl(t_logp: Tensor, s_logp: Tensor, *, alpha: float = 0.1) -> Tensor:
    """Skew forward KL (DistiLLM): KL(p ‖ α·p + (1 − α)·q). α = 0 is forward KL; bounded by −log α.

    [N, V] x2 -> [N]
    """
    _check_unit_interval("skew alpha", alpha)
    return _kl(t_logp, _log_mix(t_logp, s_logp, alpha))


def skew_rkl(t_logp: Tensor, s_logp: Tensor, *, alpha: float = 0.1) -> Tensor:
    """Skew reverse KL (DistiLLM): KL(q ‖ α·q + (1 − α)·p). α = 0 is reverse KL. [N, V] x2 -> [N]."""
    _check_unit_interval("skew alpha", alpha)
    return _kl(s_logp, _log_mix(s_logp, t_logp, alpha))


def tvd(t_logp: Tensor, s_logp: Tensor) -> Tensor:
    """Total variation distance ½ Σ_v |p(v) − q(v)|, in [0, 1]. [N, V] x2 -> [N]."""
    return 0.5 * (t_logp.exp() - s_logp.exp()).abs().sum(dim=-1)


def entropy_gated_kl(t_logp: Tensor, s_logp: Tensor, *, threshold: float = 1.0, fkl_weight: float = 1.0) -> Tensor:
    """Entropy-aware on-policy distillation (EOPD; Jin et al., ICML 2026, arXiv 2603.07079):
    reverse KL on every token, plus forward KL where the teacher is uncertain:

        D = KL(q‖p) + fkl_weight · 1[H(p) > threshold] · KL(p‖q).     [N, V] x2 -> [N]

    H(p) is the entropy (nats) of the teacher distribution this function receives (at the token's
    temperature; T = 1 in the ``eopd`` preset). The gate depends on the teacher only, so it carries no
    gradient. The paper's full text was not available to us: this is our reading of its abstract
    (docs/on-policy.md); threshold and weight are config fields.
    """
    gate = (entropy(t_logp) > threshold).to(t_logp.dtype) * fkl_weight  # [N]
    return reverse_kl(t_logp, s_logp) + gate * forward_kl(t_logp, s_logp)


# --------------------------------------------------------------------------- token statistics


def entropy(logp: Tensor) -> Tensor:
    """Shannon entropy H = −Σ_v p(v) log p(v) in nats, with 0 · log 0 = 0. [N, V] -> [N]."""
    p = logp.exp()  # [N, V]
    safe_logp = torch.where(p > 0, logp, torch.zeros_like(logp))  # [N, V]
    return -(p * safe_logp).sum(dim=-1)  # [N]


def entropy_from_moments(z: Tensor, d: Tensor, a: float) -> Tensor:
    """The entropy of p_τ ∝ exp(a · x) (a = 1/τ) from its moments z = Σ_v exp(a · x) and d = Σ_v exp(a · x) · x,
    [N] each, for any x = log p + a row constant: log p_τ = a · x − log z, so H = log z − a · d / z."""
    return z.log() - a * d / z


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a(v) · b(v) per row of a, b [N, V] -> [N]. On a CPU as a batched matrix product: BLAS reads both
    once and writes no [N, V] product (``(a * b).sum(-1)`` writes one, and the page faults of a fresh large
    buffer cost as much as the arithmetic). Elsewhere elementwise: a CUDA matmul may run in TF32."""
    if a.device.type != "cpu":
        return (a * b).sum(dim=-1)
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(a.shape[0])


def hellinger(t_logp: Tensor, s_logp: Tensor) -> Tensor:
    """Hellinger distance sqrt(1 − Σ_v sqrt(p(v) q(v))), in [0, 1] (AdaKD's token difficulty).

    [N, V] x2 -> [N]. The Bhattacharyya coefficient is formed as exp((log p + log q) / 2) so no
    sqrt of a tiny product is taken; rounding can push 1 − BC slightly below 0, hence the clamp.
    Not meant to be differentiated (the sqrt has an infinite slope at 0).
    """
    bc = torch.exp(0.5 * (t_logp + s_logp)).sum(dim=-1)  # [N]
    return torch.sqrt(torch.clamp(1.0 - bc, min=0.0, max=1.0))  # [N]


# --------------------------------------------------------------------------- analytic student gradients
#
# Each ``*_grad(t_logp, s_logp, **hp) -> (d [N], g [N, V])`` returns the same value d as the divergence
# and g = ∂d/∂s_logp, treating the entries of s_logp as free coordinates (the log-softmax's own
# Jacobian is applied by the caller). t_logp is SCRATCH (overwritten, to keep at most ~4
# vocabulary-sized tensors alive); s_logp is read only (the caller needs it afterwards). Derivations (m is the mixture of each divergence):
#   forward KL  KL(p‖q):          g = −p
#   reverse KL  KL(q‖p):          g = q (log q − log p + 1)
#   JSD_β:                        g = (1 − β) q (log q − log m),  m = βp + (1 − β)q
#   skew fwd    KL(p‖m):          g = −(1 − α) p q / m,           m = αp + (1 − α)q
#   skew rev    KL(q‖m):          g = q (log q − log m + 1 − α q / m),  m = αq + (1 − α)p
#   TVD ½Σ|p − q|:                g = ½ sign(q − p) q
#   entropy-gated (EOPD):         g = q (log q − log p + 1) − c p,  c = fkl_weight · 1[H(p) > threshold]
# with 0 wherever the weighting mass (p or q) is 0, as in the values' 0 · log 0 = 0.


def _forward_kl_grad(t_logp: Tensor, s_logp: Tensor) -> tuple[Tensor, Tensor]:
    p = t_logp.exp()  # [N, V]
    terms = t_logp.sub_(s_logp).mul_(p)  # [N, V], in place of t_logp: p (log p − log q)
    d = terms.sum(dim=-1)  # [N]
    bad = torch.isnan(d)  # a row with p = 0 where log p = −inf (a masked id): 0 · −inf is nan there
    if bad.any():  # 0 · log 0 = 0 on those entries only, as forward_kl takes it (one [N, V] pass fewer elsewhere)
        d[bad] = terms[bad].masked_fill_(p[bad] <= 0, 0.0).sum(dim=-1)  # a nan teacher (p nan) stays nan
    return d, p.neg_()


def _reverse_kl_grad(t_logp: Tensor, s_logp: Tensor) -> tuple[Tensor, Tensor]:
    q = s_logp.exp()  # [N, V]
    diff = t_logp.neg_().add_(s_logp).masked_fill_(q <= 0, 0.0)  # log q − log p on q's support
    d = (q * diff).sum(dim=-1)  # [N]
    return d, diff.add_(1.0).mul_(q)  # q = 0 rows of diff are 0, so g is 0 there


def _jsd_grad(t_logp: Tensor, s_logp: Tensor, *, beta: float = 0.5) -> tuple[Tensor, Tensor]:
    if beta == 0.0:
        return _forward_kl_grad(t_logp, s_logp)
    if beta == 1.0:
        return _reverse_kl_grad(t_logp, s_logp)
    d = jsd(t_logp, s_logp, beta=beta)
    q = s_logp.exp()
    g = _log_mix(t_logp, s_logp, beta).neg_().add_(s_logp).masked_fill_(q <= 0, 0.0)  # log q − log m
    return d, g.mul_(q).mul_(1.0 - beta)


def _skew_fkl_grad(t_logp: Tensor, s_logp: Tensor, *, alpha: float = 0.1) -> tuple[Tensor, Tensor]:
    if alpha == 0.0:  # KL(p‖q) itself
        return _forward_kl_grad(t_logp, s_logp)
    d = skew_fkl(t_logp, s_logp, alpha=alpha)
    if alpha == 1.0:  # KL(p‖p) = 0 whatever q is
        return d, torch.zeros_like(s_logp)
    m_logp = _log_mix(t_logp, s_logp, alpha)
    outside = torch.isneginf(t_logp)  # p = 0
    g = m_logp.neg_().add_(t_logp).add_(s_logp).exp_()  # p q / m
    return d, g.masked_fill_(outside, 0.0).mul_(-(1.0 - alpha))


def _skew_rkl_grad(t_logp: Tensor, s_logp: Tensor, *, alpha: float = 0.1) -> tuple[Tensor, Tensor]:
    if alpha == 0.0:  # KL(q‖p) itself (and q/m is unbounded: no α q/m term to form)
        return _reverse_kl_grad(t_logp, s_logp)
    d = skew_rkl(t_logp, s_logp, alpha=alpha)
    m_logp = _log_mix(s_logp, t_logp, alpha)
    q = s_logp.exp()
    ratio = (s_logp - m_logp).masked_fill_(q <= 0, 0.0)  # log(q / m)
    g = ratio.exp().mul_(-alpha).add_(ratio).add_(1.0).mul_(q)  # q (log q/m + 1 − α q/m)
    return d, g


def _tvd_grad(t_logp: Tensor, s_logp: Tensor) -> tuple[Tensor, Tensor]:
    q, p = s_logp.exp(), t_logp.exp_()
    diff = q - p
    d = 0.5 * diff.abs().sum(dim=-1)
    return d, diff.sign_().mul_(q).mul_(0.5)


def _entropy_gated_kl_grad(t_logp: Tensor, s_logp: Tensor, *, threshold: float = 1.0,
                           fkl_weight: float = 1.0) -> tuple[Tensor, Tensor]:
    gate = (entropy(t_logp) > threshold).to(t_logp.dtype) * fkl_weight  # [N]
    p = t_logp.exp()  # [N, V]
    d_forward = forward_kl(t_logp, s_logp)  # [N], before t_logp is overwritten
    d_reverse, g = _reverse_kl_grad(t_logp, s_logp)
    return d_reverse + gate * d_forward, g.sub_(p.mul_(gate[:, None]))


_ANALYTIC: dict[Callable, Callable] = {
    forward_kl: _forward_kl_grad, reverse_kl: _reverse_kl_grad, jsd: _jsd_grad,
    skew_fkl: _skew_fkl_grad, skew_rkl: _skew_rkl_grad, tvd: _tvd_grad, entropy_gated_kl: _entropy_gated_kl_grad,
}


def value_and_grad(divergence: Divergence) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """The analytic ``(t_logp, s_logp) -> (d [N], ∂d/∂s_logp [N, V])`` of a divergence (its bound
    hyperparameters included; t_logp is overwritten), or None when it has none (use autograd)."""
    fn, kwargs = divergence, {}
    if isinstance(divergence, functools.partial) and not divergence.args:
        fn, kwargs = divergence.func, dict(divergence.keywords)
    grad = _ANALYTIC.get(fn)
    if grad is None:
        return None
    return functools.partial(grad, **kwargs) if kwargs else grad
