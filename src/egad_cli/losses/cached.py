"""Divergences against a cached teacher: top-k log-probabilities plus an explicit tail bucket (DESIGN §7).

A teacher cache keeps, per token, the k most likely ids with their log-probabilities at T = 1 and a
few *tail power sums* ``log S(a) = log Σ_{v ∉ top-k} p(v)^a`` on a grid of exponents ``a = 1/τ``.
That is enough to compare teacher and student at any per-token temperature τ over the partition
{top-k tokens} ∪ {one tail bucket}:

* teacher, exactly on the top-k:  log p^τ(v) = a·log p(v) − log Z(a),  Z(a) = Σ_top p^a + S(a);
  the tail bucket gets S(a)/Z(a) (S(a) interpolated between grid points, exact on them; τ = 1 is
  always a grid point, where S is the tail mass itself);
* student, exactly: its log-softmax at τ gathered at the same ids, and the rest of its mass as the
  tail bucket.

Any registered divergence then runs unchanged on these [N, k + 1] log-probabilities. Dropping the
tail instead (a truncated KL over the top-k only) is biased; with the bucket the divergence is the
one between the two distributions *coarse-grained* onto the partition, a lower bound of the full
one for the KL family (data processing), and equal to it when k = V (the tail is empty: -inf on
both sides, which the divergences treat as 0 · log 0 = 0).

This module is the math; ``egad_cli.teacher_cache`` writes and reads the shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TeacherTopK", "cached_divergence", "cached_hellinger", "student_buckets", "tail_of", "teacher_buckets",
           "topk_from_logits"]

#: exponents a = 1/τ at which tail power sums are stored by default: τ from 4 down to 0.25, with τ = 1 exact
DEFAULT_EXPONENTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass
class TeacherTopK:
    """What a cache stores per token for the divergence (N tokens, k kept, G tail exponents)."""

    logp: Tensor  #: [N, k] log p(v) at T = 1 of the k most likely tokens (descending)
    ids: Tensor  #: [N, k] int64 their token ids
    exponents: Tensor  #: [G] increasing exponents a = 1/τ of the tail power sums (1.0 among them)
    log_tail: Tensor  #: [N, G] log Σ_{v ∉ top-k} p(v)^a (−inf when the tail is empty, k = V)

    def rows(self, r: Tensor) -> TeacherTopK:
        """The rows r [C] (int64) of every per-token field."""
        return TeacherTopK(self.logp.index_select(0, r), self.ids.index_select(0, r), self.exponents,
                           self.log_tail.index_select(0, r))

    def divergence(self, s_logits: Tensor, tau: Tensor, divergence) -> Tensor:
        """Per-token divergence [N] over the partition {top-k} ∪ {tail} at τ [N] (differentiable w.r.t.
        the student's logits s_logits [N, V])."""
        return divergence(teacher_buckets(self, tau), student_buckets(s_logits, self.ids, tau))

    @torch.no_grad()
    def hellinger(self, s_logits: Tensor) -> Tensor:
        """Hellinger distance [N] at T = 1 over the same partition (exact when k = V)."""
        from .divergences import hellinger

        tau = torch.ones(s_logits.shape[0], device=s_logits.device)
        return hellinger(teacher_buckets(self, tau), student_buckets(s_logits, self.ids, tau))

    @property
    def tau_range(self) -> tuple[float, float]:
        """The temperatures whose tail the grid covers: τ = 1/a for a in [a_min, a_max]."""
        return 1.0 / float(self.exponents[-1]), 1.0 / float(self.exponents[0])


@torch.no_grad()
def topk_from_logits(t_logits: Tensor, k: int, exponents: tuple[float, ...] = DEFAULT_EXPONENTS) -> TeacherTopK:
    """The cached form of teacher logits [N, V] (computed in fp32 from the full vocabulary)."""
    top, _ = tail_of(torch.log_softmax(t_logits.float(), dim=-1), k, exponents)
    return top


@torch.no_grad()
def tail_of(logp: Tensor, k: int, exponents: tuple[float, ...] = DEFAULT_EXPONENTS) -> tuple[TeacherTopK, Tensor | None]:
    """(the top-k head of log-probabilities logp [N, V] with its tail power sums, the tail itself [N, V]:
    q = p / m on the tail, 0 on the head; None when k = V and the tail is empty).

    The tail sums are taken relative to the largest tail probability m (the (k+1)-th): with
    q = p / m ≤ 1 on the tail, S(a) = m^a · Σ q^a and Σ q^a ≥ 1, so nothing under- or overflows, and
    for the default grid (multiples of 1/4) every q^a is a product of q, √q and ⁴√q: one exp pass
    over the vocabulary instead of one per exponent (the cost of `egad cache` is mostly this)."""
    if 1.0 not in exponents or list(exponents) != sorted(set(exponents)):
        raise ValueError(f"exponents must be increasing, without repeats, and include 1.0; got {exponents}")
    n, v = logp.shape
    k = min(int(k), v)
    a = torch.tensor(exponents, dtype=torch.float32, device=logp.device)  # [G]
    if k == v:  # lossless: the tail is empty
        top, ids = logp.topk(k, dim=-1)
        return TeacherTopK(logp=top, ids=ids, exponents=a,
                           log_tail=torch.full((n, len(exponents)), -math.inf, device=logp.device)), None
    values, order = logp.topk(k + 1, dim=-1)  # [N, k + 1]
    top, ids, log_m = values[:, :k], order[:, :k], values[:, k]  # log_m: [N] the largest tail log-prob
    q = (logp - log_m[:, None]).exp_()  # [N, V]: p / m
    q.scatter_(-1, ids, 0.0)  # the tail only
    sums = torch.stack(_power_sums(q, exponents), dim=-1)  # [N, G] Σ_tail q^a, each ≥ 1
    log_tail = sums.log() + a[None, :] * log_m[:, None]  # log S(a) = log Σ q^a + a · log m
    return TeacherTopK(logp=top, ids=ids, exponents=a, log_tail=log_tail), q


def _power_sums(q: Tensor, exponents: tuple[float, ...]) -> list[Tensor]:
    """[Σ_v q(v)^a for a in exponents], each [N], for q [N, V] in [0, 1]. Multiples of 1/4 (up to 16) are
    products of powers r^(2^j) of r = q^(1/4) (square roots and squarings, no exp); others use pow."""
    if not all(float(4 * a).is_integer() and 0 < a <= 16 for a in exponents):
        return [q.pow(a).sum(dim=-1) for a in exponents]
    # r^(2^j) for r = q^(1/4), built by squaring; a plain dict and loop (a recursive closure would be a
    # reference cycle holding [N, V] tensors until the cyclic GC happens to run: gigabytes per shard)
    n_max = max(int(4 * e) for e in exponents)
    half = q.sqrt()
    powers = {1: half.sqrt(), 2: half, 4: q}
    bit = 4
    while bit * 2 <= n_max:
        powers[bit * 2] = powers[bit] * powers[bit]
        bit *= 2
    sums = []
    for e in exponents:
        n, bit, product = int(4 * e), 1, None
        while n:
            if n & 1:
                product = powers[bit] if product is None else product * powers[bit]
            n, bit = n >> 1, bit << 1
        sums.append(product.sum(dim=-1))
    powers.clear()
    return sums


def _log_tail_at(top: TeacherTopK, a: Tensor) -> Tensor:
    """log S(a) per token [N] for per-token exponents a [N]: linear in a between grid points (log S is
    convex in a, so this is a slight over-estimate between points and exact on them); clamped to the grid."""
    grid = top.exponents  # [G]
    a = a.clamp(grid[0], grid[-1])
    hi = torch.searchsorted(grid, a.contiguous()).clamp(1, grid.numel() - 1)  # [N]
    lo = hi - 1
    a_lo, a_hi = grid[lo], grid[hi]
    y_lo = top.log_tail.gather(1, lo[:, None]).squeeze(1)  # [N]
    y_hi = top.log_tail.gather(1, hi[:, None]).squeeze(1)
    w = (a - a_lo) / (a_hi - a_lo)
    # an empty tail is −inf at every exponent: keep it exactly −inf (no inf − inf)
    return torch.where(torch.isneginf(y_lo) & torch.isneginf(y_hi), y_lo, y_lo + w * (y_hi - y_lo))


def teacher_buckets(top: TeacherTopK, tau: Tensor) -> Tensor:
    """Teacher log-probabilities at per-token τ [N] over (top-k, tail): [N, k + 1]."""
    a = 1.0 / tau.float()  # [N]
    scaled = top.logp * a[:, None]  # [N, k]
    log_tail = _log_tail_at(top, a)  # [N]
    log_z = torch.logaddexp(torch.logsumexp(scaled, dim=-1), log_tail)  # [N]
    return torch.cat([scaled, log_tail[:, None]], dim=-1) - log_z[:, None]


def student_buckets(s_logits: Tensor, ids: Tensor, tau: Tensor) -> Tensor:
    """Student log-probabilities at per-token τ [N] over (the teacher's top-k ids, tail): [N, k + 1].
    Differentiable w.r.t. s_logits [N, V].

    The tail is log(1 − Σ_top q), summed in fp64, where the tail holds at least 1 % of the mass (the
    fp32 rounding of the log-probs then costs < 1e-5 relative); rows more confident than that take
    a log-sum-exp over their other entries (no cancellation when the tail is tiny). The first is one
    [N, k] sum instead of a [N, V] masked copy and reduction: most rows of a learning student."""
    logp = torch.log_softmax(s_logits.float() / tau.float()[:, None], dim=-1)  # [N, V]
    top = logp.gather(-1, ids)  # [N, k]
    mass = top.double().exp().sum(dim=-1)  # [N]
    confident = mass >= 0.99
    tail = torch.log1p(-torch.where(confident, 0.0, mass)).float()  # [N]
    if bool(confident.any()):
        rows = confident.nonzero().squeeze(1)  # [M]
        rest = logp.index_select(0, rows).scatter(-1, ids.index_select(0, rows), -math.inf)  # [M, V]
        tail = tail.index_put((rows,), torch.logsumexp(rest, dim=-1))
    return torch.cat([top, tail[:, None]], dim=-1)


def cached_divergence(top, s_logits: Tensor, tau: Tensor, divergence) -> Tensor:
    """Per-token divergence [N] between a cached teacher (TeacherTopK: bucketed; TeacherSampled: an
    unbiased estimate) and the student at τ. divergence: ``fn(t_logp, s_logp) -> [N]``."""
    return top.divergence(s_logits, tau, divergence)


@torch.no_grad()
def cached_hellinger(top, s_hidden: Tensor, s_head: Tensor, chunk_size: int = 1024) -> Tensor:
    """Hellinger distance [N] at T = 1 between the cached teacher (either format) and the student, from its
    final hidden states [N, Ds] and sliced head [V, Ds], chunk by chunk."""
    n = s_hidden.shape[0]
    out = torch.empty(n, dtype=torch.float32, device=s_hidden.device)
    dt = torch.promote_types(s_hidden.dtype, s_head.dtype)
    for start in range(0, n, chunk_size):
        r = torch.arange(start, min(start + chunk_size, n), device=s_hidden.device)  # [C]
        s_logits = (s_hidden[r].to(dt) @ s_head.to(dt).T).float()  # [C, V]
        out[r] = top.rows(r).hellinger(s_logits)
    return out
