"""The one home of loss normalisation (DESIGN §3: denominators are global).

Every loss term is a *sum* over tokens divided by a denominator that covers the whole optimizer
step: all of its micro-batches and, under DDP, all ranks. So k micro-batches of accumulation equal
one k-times larger batch, and N ranks equal one N-times larger batch — a per-micro-batch mean is a
known bug class. Two pieces:

* :func:`step_denominators` — the step's global sums, computed once in the unit's no-grad plan;
* :func:`backward` — DDP *averages* gradients over ranks, but each rank's loss is already its share
  of the global mean, so the gradient wanted is the *sum* over ranks: scale by the world size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from egad_cli.engine.runtime import Runtime


@dataclass(frozen=True)
class Denominators:
    """Global (all micro-batches of the step, all ranks) denominators of the loss terms."""

    weight: float  #: Σ_i w_i over distilled tokens (or the valid-token count with weighting.norm=token_count)
    tokens: float  #: number of valid (loss) tokens: the CE term's denominator


def step_denominators(weight_sum: torch.Tensor, token_sum: torch.Tensor, runtime: Runtime) -> Denominators:
    """The step's local sums (this rank, every micro-batch) reduced over ranks; floored so an all-masked
    step gives a zero loss rather than 0/0."""
    sums = runtime.all_reduce_sum(torch.stack([weight_sum, token_sum]).double())
    weight, tokens = sums.clamp_min(1e-12).tolist()
    return Denominators(weight=weight, tokens=tokens)


def backward(loss: torch.Tensor, runtime: Runtime) -> None:
    """Backpropagate a globally normalised micro-batch loss (see the module docstring for the factor)."""
    (loss * runtime.world_size).backward()
