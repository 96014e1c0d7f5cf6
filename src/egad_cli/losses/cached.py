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

__all__ = [
    "POWER_BASIS",
    "SPLIT_BUFFER_ROWS",
    "TailSplit",
    "TeacherTopK",
    "cached_divergence",
    "cached_hellinger",
    "split_tail",
    "student_buckets",
    "tail_of",
    "teacher_buckets",
    "topk_from_logits",
]

#: exponents a = 1/τ at which tail power sums are stored by default: τ from 4 down to 0.25, with τ = 1 exact
DEFAULT_EXPONENTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass
class TeacherTopK:
    """What a cache stores per token for the divergence (N tokens, k kept, G tail exponents)."""

    logp: Tensor  #: [N, k] log p(v) at T = 1 of the k most likely tokens (descending)
    ids: Tensor  #: [N, k] int64 their token ids
    exponents: Tensor  #: [G] increasing exponents a = 1/τ of the tail power sums (1.0 among them)
    log_tail: Tensor  #: [N, G] log Σ_{v ∉ top-k} p(v)^a (−inf when the tail is empty, k = V)
    #: [N, k] False on empty slots (logp −inf there; their id repeats one of the row's real ids): a sampled
    #: cache's stored ids seen as a partition (``TeacherSampled.bucketed``); None: every slot is real
    valid: Tensor | None = None

    def rows(self, r: Tensor) -> TeacherTopK:
        """The rows r [C] (int64) of every per-token field."""
        return TeacherTopK(self.logp.index_select(0, r), self.ids.index_select(0, r), self.exponents,
                           self.log_tail.index_select(0, r), None if self.valid is None else self.valid.index_select(0, r))

    def divergence(self, s_logits: Tensor, tau: Tensor, divergence) -> Tensor:
        """Per-token divergence [N] over the partition {top-k} ∪ {tail} at τ [N] (differentiable w.r.t.
        the student's logits s_logits [N, V])."""
        return divergence(teacher_buckets(self, tau), student_buckets(s_logits, self.ids, tau, self.valid))

    @torch.no_grad()
    def hellinger(self, s_logits: Tensor) -> Tensor:
        """Hellinger distance [N] at T = 1 over the same partition (exact when k = V)."""
        from .divergences import hellinger

        tau = torch.ones(s_logits.shape[0], device=s_logits.device)
        return hellinger(teacher_buckets(self, tau), student_buckets(s_logits, self.ids, tau, self.valid))

    @property
    def tau_range(self) -> tuple[float, float]:
        """The temperatures whose tail the grid covers: τ = 1/a for a in [a_min, a_max]."""
        return 1.0 / float(self.exponents[-1]), 1.0 / float(self.exponents[0])


@torch.no_grad()
def topk_from_logits(t_logits: Tensor, k: int, exponents: tuple[float, ...] = DEFAULT_EXPONENTS) -> TeacherTopK:
    """The cached form of teacher logits [N, V] (computed in fp32 from the full vocabulary)."""
    top, _ = tail_of(torch.log_softmax(t_logits.float(), dim=-1), k, exponents)
    return top


#: the powers q^b held side by side for one Gram product (``split_tail``): every default exponent is b_i + b_j
#: for two of them, or b_0 = 1/4 alone; together with log p they also give the entropies at T = 1/b
POWER_BASIS = (0.25, 0.5, 1.0, 2.0)
#: rows of the [N, rows, V] work buffer of ``split_tail``: the powers and log p (callers size chunks by it)
SPLIT_BUFFER_ROWS = len(POWER_BASIS) + 1


@dataclass
class TailSplit:
    """A teacher's log-probabilities split at its top k: the head, the tail, the entropies asked for."""

    head: TeacherTopK  #: the top-k head with the tail power sums
    tail: Tensor | None  #: [N, V] q = p / m on the tail, 0 on the head (m: the largest tail p); None when k = V
    entropies: dict[float, Tensor]  #: {T: H(p_T) [N]} for each asked T whose 1/T is in POWER_BASIS (none if k = V)


def tail_of(logp: Tensor, k: int, exponents: tuple[float, ...] = DEFAULT_EXPONENTS) -> tuple[TeacherTopK, Tensor | None]:
    """(the top-k head of log-probabilities logp [N, V] with its tail power sums, the tail itself [N, V]:
    q = p / m on the tail, 0 on the head; None when k = V and the tail is empty). See ``split_tail``."""
    split = split_tail(logp, k, exponents)
    return split.head, split.tail


@torch.no_grad()
def split_tail(logp: Tensor, k: int, exponents: tuple[float, ...] = DEFAULT_EXPONENTS,
               entropy_temps: tuple[float, ...] = ()) -> TailSplit:
    """The top-k head of log-probabilities logp [N, V] at T = 1, its tail power sums on `exponents`, the tail,
    and the entropies at those of `entropy_temps` whose 1/T is in POWER_BASIS (the others: ``entropy_at``).

    The tail sums are taken relative to the largest tail probability m (the (k+1)-th): with
    q = p / m ≤ 1 on the tail, S(a) = m^a · Σ q^a and Σ q^a ≥ 1, so nothing under- or overflows. The cost
    of ``egad cache`` beyond the teacher's forward is passes over the vocabulary, so everything is read off
    one buffer W = [q^¼, q^½, q, q², log p] [N, 5, V] with one batched Gram product G = W Wᵀ [N, 5, 5]
    (BLAS reads W once): Σ q^(b_i + b_j) = G_ij covers the default grid (¼ = b_0 alone is a plain sum), and
    G_i4 = Σ_tail q^b_i log p gives, with the exact head, the moments of p^a at a = b_i for the entropy:
    Z(a) = Σ_v p^a = Σ_head p^a + m^a Σ q^a, D(a) = Σ_v p^a log p = Σ_head p^a log p + m^a G_i4,
    H(p_{1/a}) = log Z − a D / Z (``entropy_from_moments``, the formula ``entropy_at`` uses)."""
    from .divergences import entropy_from_moments

    if 1.0 not in exponents or list(exponents) != sorted(set(exponents)):
        raise ValueError(f"exponents must be increasing, without repeats, and include 1.0; got {exponents}")
    n, v = logp.shape
    k = min(int(k), v)
    a = torch.tensor(exponents, dtype=torch.float32, device=logp.device)  # [G]
    moment_temps = [t for t in entropy_temps if 1.0 / t in POWER_BASIS]
    if k == v:  # lossless: the tail is empty, the head is everything
        top, ids = logp.topk(k, dim=-1)
        head = TeacherTopK(logp=top, ids=ids, exponents=a,
                           log_tail=torch.full((n, len(exponents)), -math.inf, device=logp.device))
        return TailSplit(head, None, {})  # no Gram product here: entropy_at gives the entropies
    values, order = logp.topk(k + 1, dim=-1)  # [N, k + 1]
    top, ids, log_m = values[:, :k], order[:, :k], values[:, k]  # log_m: [N] the largest tail log-prob
    work = logp.new_empty(n, SPLIT_BUFFER_ROWS if moment_temps else len(POWER_BASIS), v)  # [N, 4 or 5, V]
    q = work[:, 2]  # [N, V]
    torch.sub(logp, log_m[:, None], out=q).exp_()  # p / m
    q.scatter_(-1, ids, 0.0)  # the tail only
    torch.sqrt(q, out=work[:, 1])
    torch.sqrt(work[:, 1], out=work[:, 0])
    torch.mul(q, q, out=work[:, 3])
    if moment_temps:  # a masked id (log p = −inf, q = 0) would give 0 · −inf: the lowest finite value gives 0
        torch.clamp(logp, min=torch.finfo(logp.dtype).min, out=work[:, 4])
    gram = _gram(work)  # [N, R, R]: Σ_v W_i W_j
    sums = torch.stack([_tail_sum(e, gram, work, q) for e in exponents], dim=-1)  # [N, G] Σ_tail q^a, each ≥ 1
    log_tail = sums.log() + a[None, :] * log_m[:, None]  # log S(a) = log Σ q^a + a · log m
    head = TeacherTopK(logp=top, ids=ids, exponents=a, log_tail=log_tail)
    entropies = {}
    for t in moment_temps:
        i, b = POWER_BASIS.index(1.0 / t), 1.0 / t
        w = torch.exp(b * top)  # [N, k] p^b on the head
        scale = torch.exp(b * log_m)  # [N] m^b
        z = w.sum(-1) + scale * _tail_sum(b, gram, work, q)
        d = (w * top).sum(-1) + scale * gram[:, i, 4]
        entropies[t] = entropy_from_moments(z, d, b)
    return TailSplit(head, q, entropies)


def _gram(work: Tensor, blas: bool | None = None) -> Tensor:
    """Σ_v W_i(v) W_j(v) [N, R, R] for work [N, R, V]. On a CPU one batched matmul (BLAS reads W once);
    elsewhere (or blas=False) the pairs one by one in fp32, since a CUDA matmul may run in TF32
    (torch.set_float32_matmul_precision("high")), whose 10-bit mantissa would cost the sums 1e-3 relative."""
    if blas if blas is not None else work.device.type == "cpu":
        return torch.bmm(work, work.transpose(1, 2))
    n, r, _ = work.shape
    gram = work.new_empty(n, r, r)
    for i in range(r):
        for j in range(i, r):
            gram[:, i, j] = gram[:, j, i] = (work[:, i] * work[:, j]).sum(dim=-1)
    return gram


def _tail_sum(e: float, gram: Tensor, work: Tensor, q: Tensor) -> Tensor:
    """Σ_v q(v)^e [N] from the Gram product of the powers in ``split_tail`` (pow for an exponent off it)."""
    if e == POWER_BASIS[0]:
        return work[:, 0].sum(dim=-1)
    for i, b_i in enumerate(POWER_BASIS):
        for j in range(i, len(POWER_BASIS)):
            if b_i + POWER_BASIS[j] == e:
                return gram[:, i, j]
    return q.pow(e).sum(dim=-1)


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


def student_buckets(s_logits: Tensor, ids: Tensor, tau: Tensor, valid: Tensor | None = None) -> Tensor:
    """Student log-probabilities at per-token τ [N] over (the teacher's top-k ids, tail): [N, k + 1].
    Differentiable w.r.t. s_logits [N, V].

    The tail is log(1 − Σ_top q), summed in fp64, where the tail holds at least 1 % of the mass (the
    fp32 rounding of the log-probs then costs < 1e-5 relative); rows more confident than that take
    a log-sum-exp over their other entries (no cancellation when the tail is tiny). The first is one
    [N, k] sum instead of a [N, V] masked copy and reduction: most rows of a learning student.
    valid [N, k]: False on empty slots, which get −inf (see TeacherTopK.valid)."""
    logp = torch.log_softmax(s_logits.float() / tau.float()[:, None], dim=-1)  # [N, V]
    top = logp.gather(-1, ids)  # [N, k]
    if valid is not None:  # an empty slot holds no mass (its id repeats a real one, so the scatter below is exact)
        top = top.masked_fill(~valid, -math.inf)
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
