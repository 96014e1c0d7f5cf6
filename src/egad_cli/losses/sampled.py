"""Divergences against a *sampled* teacher cache: an exact head plus ids drawn from the tail (DESIGN §7).

Per predicting token the cache keeps (``egad cache``'s default format):

* the k most likely ids with their exact log-probabilities log p(v) at T = 1 (the *head* K; k ≥ 1
  so that the teacher's top-1 is known to ``egad eval``-style metrics);
* the tail power sums log S(a) = log Σ_{v ∉ K} p(v)^a on a grid of exponents a = 1/τ (1 among them,
  where S(1) is the tail mass), as the top-k format stores them;
* N draws with replacement from the teacher's *tail* distribution r(v) = p(v) / S(1), v ∉ K: the unique
  ids u_j, their counts c_j (Σ c_j = N) and their log-probabilities log p(u_j).

Estimators (a = 1/τ_i per token; Z(a) = Σ_K p^a + S(a) is known, so p^τ(v) = p(v)^a / Z(a) is known
exactly at every stored id). Any divergence that is a sum of per-entry terms,
D(p^τ, q^τ) = Σ_v ψ(log p^τ(v), log q^τ(v)) — forward and reverse KL, JSD, the skew KLs, TVD — is

    D̂ = Σ_{v ∈ K} ψ(v) + Σ_j w_j ψ(u_j),     w_j = 1 / π_j,   π_j = 1 − (1 − r(u_j))^N

with q^τ the student's exact full-vocabulary log-softmax at τ and r(v) = p(v) / S(1). π_v is the
probability that the N draws include tail id v, so E[Σ_j w_j ψ(u_j)] = Σ_{v ∉ K} π_v ψ(v) / π_v =
Σ_{v ∉ K} ψ(v) (Horvitz-Thompson): D̂ is unbiased for D, and because D̂ is linear in the random weights
and the student enters only through q^τ, ∇D̂ is unbiased for ∇D too — at every τ where Z(a) is exact
(the grid points; between them log S(a) is interpolated, as in the top-k format). For forward KL a
drawn id's term is w_j · p^τ(u_j)(log p^τ − log q^τ)(u_j); with the counts instead (Hansen-Hurwitz,
w_j = (c_j / N) / r(u_j), the paper's form) its weight on p^τ would be (c_j / N) · S(1) · p(u_j)^(a−1) / Z(a),
the issue's formula; both are unbiased, HT has the smaller variance (``importance_weights``).

How noisy D̂ is depends on ψ. Forward-KL-type terms carry p^τ(u_j) in ψ, which cancels the 1/p(u_j)
of the weight: bounded weights, small variance. Reverse-KL-type terms carry q^τ(u_j) / p(u_j), the
importance ratio of the student to the teacher: where the student puts mass on tail ids the teacher
almost never emits, the estimate is unbiased but heavy-tailed (measured: bench/cache_accuracy.py).
Worse, a student trained on it can move its mass onto ids the draws did not see, where the estimate
cannot see it: rkl trained from a sampled cache on this estimate diverged (docs/teacher-cache.md).
So for those losses (``LossConfig.TEACHER_WEIGHTED`` False) egad reads the stored ids as a top-k cache
reads its head: the head and the drawn ids exactly, the rest of the tail as one bucket whose teacher
mass S(a) − Σ_j p(u_j)^a is known (``TeacherSampled.bucketed``). That is the divergence between the
two distributions coarse-grained onto {stored ids} ∪ {bucket}: deterministic given the draws, a lower
bound for the KL family, and stable (the student's mass outside the stored ids is in the bucket).

Divergences whose value is not such a sum (``entropy_gated_kl``'s per-row gate) have no unbiased
estimator here (``LossConfig.PER_ENTRY``); they are not teacher-weighted either, so they read the bucketed
view, where the gate sees the entropy of the coarse-grained teacher, as from a top-k cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cached import TailSplit, TeacherTopK, _log_tail_at, split_tail

__all__ = ["TeacherSampled", "draw_from_tail", "importance_weights", "sampled_from_logp",
           "sampled_from_split"]


#: the least teacher mass ``TeacherSampled.bucketed`` leaves in the bucket, relative to the tail's: the stored
#: (rounded) log-probabilities can make S(a) − Σ_j p(u_j)^a come out ≤ 0 when the draws hold nearly all the tail
BUCKET_FLOOR = 1e-3


@dataclass
class TeacherSampled:
    """What a sampled cache stores per token for the divergence (N tokens, k head ids, m sample slots)."""

    head: TeacherTopK  #: the exact head (logp, ids [N, k]) and the tail power sums (log_tail [N, G])
    sample_ids: Tensor  #: [N, m] int64 unique ids drawn from the tail (padding slots: id 0, count 0)
    sample_counts: Tensor  #: [N, m] float32 how many of the `draws` draws gave each id
    sample_logp: Tensor  #: [N, m] log p(v) at T = 1 of each drawn id (padding: 0)
    draws: int  #: N, the number of draws per token
    #: b: the draws follow r(v) ∝ p(v)^b on the tail (b = 1/T_draw; 1: the teacher itself), b on the exponent grid
    draw_exponent: float = 1.0
    #: the estimator's weights of the sample slots [N, m], when given (an average of several draws' estimators,
    #: bench/cache_accuracy.py); None: ``importance_weights`` of these draws
    weights: Tensor | None = None

    def bucketed(self) -> TeacherTopK:
        """The stored ids (head and distinct draws, [N, k + m]) with the rest of the tail as one bucket: the
        top-k format's partition over them (see the module docstring). The bucket's teacher mass at each grid
        exponent is S(a) − Σ_j p(u_j)^a, kept at ≥ BUCKET_FLOOR · S(a): a bucket the teacher leaves empty
        while the student does not would make reverse KL infinite. Empty sample slots keep log p = −inf and repeat the row's top-1 id (valid False)."""
        drawn = self.sample_counts > 0  # [N, m]
        ids = torch.cat([self.head.ids, torch.where(drawn, self.sample_ids, self.head.ids[:, :1])], dim=-1)
        sample_logp = self.sample_logp.masked_fill(~drawn, -torch.inf)  # [N, m]
        grid = self.head.exponents.double()  # [G]
        tail = self.head.log_tail.double().exp()  # [N, G] S(a)
        taken = torch.exp(grid[None, :, None] * sample_logp.double()[:, None, :]).sum(dim=-1)  # [N, G]
        rest = torch.maximum(tail - taken, BUCKET_FLOOR * tail)  # [N, G]; 0 where the tail is empty (k = V)
        valid = torch.cat([torch.ones_like(self.head.ids, dtype=torch.bool), drawn], dim=-1)
        return TeacherTopK(logp=torch.cat([self.head.logp, sample_logp], dim=-1), ids=ids,
                           exponents=self.head.exponents, log_tail=rest.log().float(), valid=valid)

    @property
    def logp(self) -> Tensor:
        """[N, k] the exact head's log-probabilities (descending): logp[:, 0] is the teacher's top-1."""
        return self.head.logp

    @property
    def ids(self) -> Tensor:
        return self.head.ids

    def rows(self, r: Tensor) -> TeacherSampled:
        """The rows r [C] (int64) of every per-token field."""
        return TeacherSampled(self.head.rows(r), self.sample_ids.index_select(0, r),
                              self.sample_counts.index_select(0, r), self.sample_logp.index_select(0, r), self.draws,
                              self.draw_exponent, None if self.weights is None else self.weights.index_select(0, r))

    def divergence(self, s_logits: Tensor, tau: Tensor, divergence) -> Tensor:
        """Per-token estimate D̂ [N] of divergence(p^τ, q^τ) (differentiable w.r.t. s_logits [N, V]; the
        divergence must be a sum of per-entry terms, see the module docstring)."""
        t_logp, weights = self.teacher_terms(tau)  # [N, k + m] each
        s_logp = torch.log_softmax(s_logits.float() / tau.float()[:, None], dim=-1)  # [N, V]
        s_at = s_logp.gather(-1, torch.cat([self.head.ids, self.sample_ids], dim=-1))  # [N, k + m]
        terms = per_entry(divergence, t_logp, s_at)  # [N, k + m]
        # double where: a padding slot (weight 0) contributes exactly 0 to value and gradient
        return torch.where(weights > 0, weights * torch.where(weights > 0, terms, 0.0), 0.0).sum(dim=-1)

    def teacher_terms(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        """(log p^τ at the head and sample ids [N, k + m], the estimator's weight of each [N, k + m]: 1 on the
        head, 1 / π_j on the samples)."""
        a = 1.0 / tau.float()  # [N]
        log_z = torch.logaddexp(torch.logsumexp(self.head.logp * a[:, None], dim=-1),
                                _log_tail_at(self.head, a))  # [N] log Z(a)
        t_logp = torch.cat([self.head.logp, self.sample_logp], dim=-1) * a[:, None] - log_z[:, None]
        ones = torch.ones_like(self.head.logp)
        weights = importance_weights(self) if self.weights is None else self.weights
        return t_logp, torch.cat([ones, weights], dim=-1)

    @torch.no_grad()
    def bhattacharyya(self, s_logits: Tensor) -> Tensor:
        """The Bhattacharyya sum BC = Σ_v √(p(v) q(v)) [N] at T = 1, estimated as above (unbiased)."""
        tau = torch.ones(s_logits.shape[0], device=s_logits.device)
        t_logp, weights = self.teacher_terms(tau)
        s_logp = torch.log_softmax(s_logits.float(), dim=-1)
        s_at = s_logp.gather(-1, torch.cat([self.head.ids, self.sample_ids], dim=-1))
        return (weights * torch.exp(0.5 * (t_logp + s_at))).sum(dim=-1)

    def hellinger(self, s_logits: Tensor) -> Tensor:
        """Hellinger distance √(1 − BC) [N] at T = 1 (of an unbiased BC: a concave function of it, so slightly
        biased; it serves as a difficulty score)."""
        return torch.sqrt(torch.clamp(1.0 - self.bhattacharyya(s_logits), min=0.0, max=1.0))


def importance_weights(rows: TeacherSampled) -> Tensor:
    """The estimator's weight of each distinct drawn id [N, m]: 1 / π_j, the Horvitz-Thompson weight, where
    π_j = 1 − (1 − r_j)^N is the probability that N draws from the tail distribution r = p / S(1) include
    u_j. Then E[Σ_j ψ(u_j) / π_j] = Σ_{v ∉ K} ψ(v) (each tail id enters with probability π_v): unbiased.

    Why not the counts (Hansen-Hurwitz, w_j = (c_j / N) / r_j, also unbiased): a likely tail id (r_j near
    1/N or above) is drawn almost surely, and HT then gives it weight ≈ 1, exactly its own term, where
    c_j / (N r_j) fluctuates with the binomial count (measured: bench/cache_accuracy.py --estimator hh).
    For rare ids both are ≈ 1 / (N r_j). 0 on padding slots and when the tail is empty."""
    grid = rows.head.exponents
    b = int(torch.nonzero(grid == rows.draw_exponent)[0])  # the draw exponent is on the grid (validated when built)
    log_s = rows.head.log_tail[:, b]  # [N] log S(b) = log Σ_tail p^b: the proposal's normaliser
    r = torch.exp(rows.draw_exponent * rows.sample_logp - log_s[:, None]).clamp(max=1.0)  # [N, m] r(u_j)
    # π = 1 − (1 − r)^N without cancellation for small r: −expm1(N · log1p(−r)); r = 1 (a one-id tail): π = 1
    pi = -torch.expm1(rows.draws * torch.log1p(-r))
    drawn = (rows.sample_counts > 0) & (pi > 0)
    return torch.where(drawn, 1.0 / torch.where(drawn, pi, 1.0), 0.0)


def per_entry(divergence, t_logp: Tensor, s_logp: Tensor) -> Tensor:
    """ψ(log p, log q) for each entry [N, m] of a divergence that sums per-entry terms: the divergence over
    one-entry "distributions" (its sum over the last axis is then the term itself)."""
    return divergence(t_logp.reshape(-1, 1), s_logp.reshape(-1, 1)).reshape(t_logp.shape)


def draw_from_tail(tail: Tensor, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """Draws by inverse CDF from the rows of `tail` [C, V] (non-negative weights, e.g. p / m with the head
    zeroed) for uniforms [C, N] in [0, 1): (unique ids [C, N] int64 padded with 0, counts [C, N] int64,
    0 on padding), unique ids first in increasing order. A row without tail mass gets no draws."""
    # fp64: an fp32 running sum over V ~ 1e5 entries drifts by ~1e-3 of the mass, so the ids would be drawn
    # from a distribution other than the r their weights 1/π assume. right=True: the first cdf > x, never an
    # id of weight 0 (its cdf equals the one before it).
    cdf = tail.double().cumsum(dim=-1)  # [C, V]
    total = cdf[:, -1:]  # [C, 1]
    picks = torch.searchsorted(cdf, uniforms.double() * total, right=True).clamp_(max=tail.shape[1] - 1)  # [C, N]
    picks, _ = picks.sort(dim=-1)
    first = torch.ones_like(picks, dtype=torch.bool)
    first[:, 1:] = picks[:, 1:] != picks[:, :-1]  # [C, N] the first of each run of equal ids
    counts = (picks[:, :, None] == picks[:, None, :]).sum(dim=-1)  # [C, N] each slot's run length (N small)
    # unique ids to the front (a stable sort of "not first" keeps their increasing order), padding after
    order = (~first).to(torch.int8).argsort(dim=-1, stable=True)
    ids = torch.where(first, picks, 0).gather(-1, order)
    counts = torch.where(first, counts, 0).gather(-1, order)
    empty = (total[:, 0] <= 0)[:, None]  # [C, 1] a tail without mass (k = V): nothing drawn
    return ids.masked_fill(empty, 0), counts.masked_fill(empty, 0)


@torch.no_grad()
def sampled_from_logp(logp: Tensor, k: int, uniforms: Tensor, exponents: tuple[float, ...],
                      draw_exponent: float = 1.0) -> TeacherSampled:
    """The sampled cache's form of teacher log-probabilities logp [C, V] at T = 1 (fp32, full vocabulary):
    the exact top-k head, the tail power sums, and `uniforms.shape[1]` draws per row from the tail
    distribution r ∝ p^b (b = draw_exponent, on the grid `exponents`)."""
    return sampled_from_split(logp, split_tail(logp, k, exponents), uniforms, draw_exponent)


@torch.no_grad()
def sampled_from_split(logp: Tensor, split: TailSplit, uniforms: Tensor, draw_exponent: float = 1.0) -> TeacherSampled:
    """``sampled_from_logp`` from a split the caller already has (``egad cache`` also reads its entropies).
    Overwrites split.tail when draw_exponent ≠ 1."""
    head, tail = split.head, split.tail  # tail: [C, V] p / m on the tail, 0 on the head (None if k = V)
    grid = head.exponents.tolist()
    if not any(abs(g - draw_exponent) < 1e-6 for g in grid):
        raise ValueError(f"the draw exponent {draw_exponent} must be on the exponent grid {tuple(grid)}")
    draws = uniforms.shape[1]
    if tail is None:
        zeros = torch.zeros(logp.shape[0], draws, dtype=torch.int64, device=logp.device)
        return TeacherSampled(head, zeros, zeros.float(), zeros.float(), draws, draw_exponent)
    if draw_exponent != 1.0:
        tail.pow_(draw_exponent)  # (p / m)^b ∝ p^b on the tail, still 0 on the head
    ids, counts = draw_from_tail(tail, uniforms.to(logp.device))
    sample_logp = logp.gather(-1, ids).masked_fill(counts == 0, 0.0)
    return TeacherSampled(head, ids, counts.float(), sample_logp, draws, draw_exponent)

