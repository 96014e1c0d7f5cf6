"""Normalised token difficulty u in [0, 1] from the teacher's per-token entropy.

EGAD's curriculum, adaptive temperature and dual-branch routing all consume a
difficulty ``u_i`` in [0, 1] rather than the raw entropy ``H_i`` (nats), so that
their constants (γ, κ, c0, q) mean the same thing for any vocabulary size and
any corpus (DESIGN §3). Three estimators are offered:

* ``rank``             percentile rank of H_i among the batch's valid tokens
                       (default: scale-free, exactly uniform over a batch).
* ``normalized``       H_i / log|V| (absolute; depends on the vocabulary).
* ``running_quantile`` the CDF of H_i under a histogram of every valid token
                       seen so far (stable for small batches, checkpointed).

Every function takes flat per-token tensors ``H [N]`` and a boolean ``valid
[N]`` (False = padding / prompt). Invalid tokens get u = 0 and never influence
the ranks or quantiles of valid ones. Outputs are fp32 and detached.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import TokenPolicy
from .stats import DIFFICULTY, StepStats, teacher_entropy

__all__ = [
    "Difficulty",
    "NormalizedDifficulty",
    "RankDifficulty",
    "RunningQuantileDifficulty",
    "normalized_difficulty",
    "rank_difficulty",
]


def _check_flat(x: torch.Tensor, valid: torch.Tensor, name: str) -> None:
    if x.dim() != 1 or valid.shape != x.shape:
        raise ValueError(
            f"{name} and valid must be flat [N] tensors of the same shape, "
            f"got {tuple(x.shape)} and {tuple(valid.shape)}"
        )
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")


def _log_vocab(vocab_size: int) -> float:
    if int(vocab_size) < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    return math.log(int(vocab_size))


# --------------------------------------------------------------------------- functions


@torch.no_grad()
def rank_difficulty(H: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Percentile rank of each valid token's entropy among the valid tokens.

    Ties get their average (0-based) rank, mapped to [0, 1] by ``rank / (n_valid - 1)``:
    the lowest-entropy token gets 0, the highest 1. With one valid token u = 0.5
    (neither easy nor hard); with none, all zeros. Invalid tokens get 0.

    Sort-based, O(N log N): a pairwise comparison would be O(N²) in memory.

    Args:
        H: [N] teacher entropy per token.
        valid: [N] bool.
    Returns:
        u: [N] fp32 in [0, 1], detached.
    """
    _check_flat(H, valid, "H")
    H = H.detach().float()
    u = torch.zeros_like(H)                                    # [N]
    v = H[valid]                                               # [n]
    n = v.numel()
    if n == 0:
        return u
    if n == 1:
        u[valid] = 0.5
        return u
    sorted_v, _ = torch.sort(v)                                # [n]
    n_less = torch.searchsorted(sorted_v, v, right=False)      # [n] tokens strictly below
    n_leq = torch.searchsorted(sorted_v, v, right=True)        # [n] tokens at or below
    avg_rank = (n_less + n_leq - 1).float() * 0.5              # [n] mean 0-based rank of the tie group
    u[valid] = avg_rank / (n - 1)
    return u


@torch.no_grad()
def normalized_difficulty(H: torch.Tensor, valid: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Entropy over its maximum, ``H / log|V|``, clamped to [0, 1]; invalid tokens get 0.

    Args:
        H: [N] teacher entropy (nats).
        valid: [N] bool.
        vocab_size: |V| (>= 2).
    Returns:
        u: [N] fp32, detached.
    """
    _check_flat(H, valid, "H")
    u = (H.detach().float() / _log_vocab(vocab_size)).clamp_(0.0, 1.0)
    return torch.where(valid, u, torch.zeros_like(u))


# --------------------------------------------------------------------------- policy objects


class Difficulty(TokenPolicy):
    """Common interface: ``(H [N], valid [N]) -> u [N]`` plus checkpointable state.

    The provider of the derived statistic DIFFICULTY: it reads the teacher's entropy at T = 1
    (``needs``) and ``of(stats)`` gives u for the policies that declare DIFFICULTY.
    """

    name: str = ""
    needs = frozenset({teacher_entropy(1.0)})
    provides = DIFFICULTY

    def __call__(self, H: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def of(self, stats: StepStats) -> torch.Tensor:
        """u [N] for this step (updates the state of a stateful estimator)."""
        return self(stats[teacher_entropy(1.0)], stats.valid)


class RankDifficulty(Difficulty):
    """Per-batch percentile rank (see :func:`rank_difficulty`)."""

    name = "rank"

    def __call__(self, H: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return rank_difficulty(H, valid)


class NormalizedDifficulty(Difficulty):
    """``H / log|V|`` (see :func:`normalized_difficulty`)."""

    name = "normalized"

    def __init__(self, vocab_size: int) -> None:
        _log_vocab(vocab_size)
        self.vocab_size = int(vocab_size)

    def __call__(self, H: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return normalized_difficulty(H, valid, self.vocab_size)


class RunningQuantileDifficulty(Difficulty):
    """CDF of H_i under a running histogram of every valid entropy seen so far.

    Why: a per-batch rank is exactly uniform in every batch, so in a small batch
    (or one made of a single easy document) "hard" means only "harder than its
    neighbours". The running histogram ranks each token against the whole
    training stream instead, and its state is checkpointed so a resumed run
    sees the same difficulties.

    Fixed bins of width ``h_max / n_bins`` over [0, h_max]; entropies outside
    the range fall into the first / last bin. Each call first adds the batch's
    valid tokens to the histogram, then evaluates
    ``u_i = (count below H_i's bin + frac_i · count in the bin) / total``,
    linear interpolation within the bin (the usual histogram-CDF estimate).

    Under DDP each rank keeps its own histogram; a caller wanting a global one
    can all-reduce :meth:`batch_histogram` and use :meth:`add_counts` + :meth:`cdf`.

    Args:
        n_bins: number of histogram bins.
        h_max: upper edge of the last bin (nats). Default: ``log(vocab_size)``,
            the largest possible entropy.
        vocab_size: used only for the default ``h_max``.
    """

    name = "running_quantile"

    def __init__(self, n_bins: int = 1024, h_max: float | None = None, vocab_size: int | None = None) -> None:
        if int(n_bins) < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        if h_max is None:
            if vocab_size is None:
                raise ValueError("RunningQuantileDifficulty needs h_max or vocab_size (h_max = log|V|)")
            h_max = _log_vocab(vocab_size)
        if not (math.isfinite(h_max) and h_max > 0):
            raise ValueError(f"h_max must be a finite positive number of nats, got {h_max}")
        self.n_bins = int(n_bins)
        self.h_max = float(h_max)
        # int64 counts: exact for any realistic number of tokens; kept on the device of the data.
        self.counts = torch.zeros(self.n_bins, dtype=torch.int64)  # [n_bins]

    # -- pieces (usable separately, e.g. to all-reduce the batch histogram) --

    def _bin_pos(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin index [n] (int64) and position inside the bin [n] in [0, 1]."""
        x = H.float() * (self.n_bins / self.h_max)             # [n] position in bin units
        idx = x.floor().clamp_(0, self.n_bins - 1)             # [n]
        frac = (x - idx).clamp_(0.0, 1.0)                      # [n]
        return idx.long(), frac

    @torch.no_grad()
    def batch_histogram(self, H: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Histogram [n_bins] (int64) of this batch's valid entropies."""
        _check_flat(H, valid, "H")
        idx, _ = self._bin_pos(H.detach()[valid])
        return torch.bincount(idx, minlength=self.n_bins)

    @torch.no_grad()
    def add_counts(self, counts: torch.Tensor) -> None:
        """Add a histogram (e.g. from :meth:`batch_histogram`) to the running one."""
        self.counts = self.counts.to(counts.device) + counts.to(torch.int64)

    @torch.no_grad()
    def cdf(self, H: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Estimated CDF of each valid H_i under the running histogram (no update); 0 if empty."""
        _check_flat(H, valid, "H")
        H = H.detach()
        u = torch.zeros(H.shape, dtype=torch.float32, device=H.device)   # [N]
        counts = self.counts.to(H.device)
        # fp64 keeps fractions exact for huge counts; MPS has no fp64.
        acc = torch.float32 if H.device.type == "mps" else torch.float64
        total = counts.sum()
        if int(total) == 0 or not bool(valid.any()):
            return u
        c = counts.to(acc)
        below = torch.cumsum(c, 0) - c                          # [n_bins] tokens in lower bins
        idx, frac = self._bin_pos(H[valid])
        u[valid] = ((below[idx] + frac.to(acc) * c[idx]) / c.sum()).float().clamp_(0.0, 1.0)
        return u

    def __call__(self, H: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Update the histogram with this batch, then return u [N] (fp32, detached)."""
        self.add_counts(self.batch_histogram(H, valid))
        return self.cdf(H, valid)

    @property
    def total(self) -> int:
        """Number of valid tokens seen so far."""
        return int(self.counts.sum())

    def state_dict(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "h_max": self.h_max, "counts": self.counts.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        counts = torch.as_tensor(state["counts"], dtype=torch.int64)
        if counts.numel() != self.n_bins or int(state.get("n_bins", self.n_bins)) != self.n_bins:
            raise ValueError(
                f"running_quantile state has {counts.numel()} bins, this policy has {self.n_bins}"
            )
        self.h_max = float(state.get("h_max", self.h_max))
        self.counts = counts.clone().to(self.counts.device)
