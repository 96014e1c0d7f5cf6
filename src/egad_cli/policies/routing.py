"""Dual-branch routing: which tokens also get the feature-distillation loss.

DESIGN §3.3: every valid token gets the logit divergence; the hardest fraction
q of valid tokens (by difficulty u) also gets a hidden-state loss. The feature
branch gathers only those positions, so its cost scales with q.

Count: ``k = ceil(q · n_valid)`` (with a 1e-9 tolerance, so q = 0.3 of 10
tokens is 3, not 4 from 0.30000000000000004·10). Ceil rather than round so
that any q > 0 routes at least one token of a non-empty batch: with small
batches round() would silently turn the feature branch off.
Ties in u are broken by position: the lower index is taken first, so the
selection is deterministic and identical across runs and devices.
"""

from __future__ import annotations

import math

import torch

from .base import TokenPolicy
from .stats import DIFFICULTY, StepStats

__all__ = ["NoRouting", "TopFractionRouting", "hard_token_mask", "top_fraction_mask", "top_k_count"]

_COUNT_EPS = 1e-9


def top_k_count(fraction: float, n_valid: int) -> int:
    """``ceil(fraction · n_valid)`` with a float tolerance; 0 <= result <= n_valid."""
    k = math.ceil(fraction * n_valid - _COUNT_EPS)
    return max(0, min(int(n_valid), k))


@torch.no_grad()
def top_fraction_mask(score: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Mask [N] of the ``k`` valid tokens with the largest ``score``; ties -> lower index first.

    Args:
        score: [N] float.
        valid: [N] bool; invalid tokens are never selected.
        k: number of tokens to select (clamped to the number of valid tokens).
    """
    if score.dim() != 1 or valid.shape != score.shape:
        raise ValueError(
            f"score and valid must be flat [N] of one shape, got {tuple(score.shape)}, {tuple(valid.shape)}"
        )
    mask = torch.zeros(score.shape, dtype=torch.bool, device=score.device)    # [N]
    if k <= 0:
        return mask
    # Invalid tokens sort last; a stable descending sort keeps index order inside ties.
    key = torch.where(valid, score.detach().float(), torch.full_like(score, -math.inf, dtype=torch.float32))
    order = torch.sort(key, descending=True, stable=True).indices                # [N]
    chosen = order[:k]
    mask[chosen] = True
    return mask & valid   # k may exceed n_valid only if the caller passed it so; never pick padding


@torch.no_grad()
def hard_token_mask(u: torch.Tensor, valid: torch.Tensor, q: float = 0.3) -> torch.Tensor:
    """Hard tokens for the feature branch: the top ``ceil(q · n_valid)`` valid tokens by u.

    Args:
        u: [N] difficulty in [0, 1].
        valid: [N] bool.
        q: fraction in [0, 1]; 0 selects none, 1 selects every valid token.
    Returns:
        [N] bool, False on every invalid token.
    """
    if not (0.0 <= q <= 1.0):
        raise ValueError(f"q (hard-token fraction) must be in [0, 1], got {q}")
    n_valid = int(valid.sum())
    return top_fraction_mask(u, valid, top_k_count(q, n_valid))


class NoRouting(TokenPolicy):
    """branch=logits_only: no token is hard."""

    needs = frozenset()

    def __call__(self, stats: StepStats) -> torch.Tensor:
        return torch.zeros_like(stats.valid)


class TopFractionRouting(TokenPolicy):
    """branch=dual: the top ``q`` of valid tokens by difficulty u are hard (see :func:`hard_token_mask`)."""

    needs = frozenset({DIFFICULTY})

    def __init__(self, q: float) -> None:
        if not (0.0 <= q <= 1.0):
            raise ValueError(f"q (hard-token fraction) must be in [0, 1], got {q}")
        self.q = float(q)

    def __call__(self, stats: StepStats) -> torch.Tensor:
        return hard_token_mask(stats[DIFFICULTY], stats.valid, self.q)
