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
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "Divergence",
    "entropy",
    "forward_kl",
    "hellinger",
    "jsd",
    "reverse_kl",
    "skew_fkl",
    "skew_rkl",
    "tvd",
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


# --------------------------------------------------------------------------- token statistics


def entropy(logp: Tensor) -> Tensor:
    """Shannon entropy H = −Σ_v p(v) log p(v) in nats, with 0 · log 0 = 0. [N, V] -> [N]."""
    p = logp.exp()  # [N, V]
    safe_logp = torch.where(p > 0, logp, torch.zeros_like(logp))  # [N, V]
    return -(p * safe_logp).sum(dim=-1)  # [N]


def hellinger(t_logp: Tensor, s_logp: Tensor) -> Tensor:
    """Hellinger distance sqrt(1 − Σ_v sqrt(p(v) q(v))), in [0, 1] (AdaKD's token difficulty).

    [N, V] x2 -> [N]. The Bhattacharyya coefficient is formed as exp((log p + log q) / 2) so no
    sqrt of a tiny product is taken; rounding can push 1 − BC slightly below 0, hence the clamp.
    Not meant to be differentiated (the sqrt has an infinite slope at 0).
    """
    bc = torch.exp(0.5 * (t_logp + s_logp)).sum(dim=-1)  # [N]
    return torch.sqrt(torch.clamp(1.0 - bc, min=0.0, max=1.0))  # [N]
