"""AdaKD (AAAI 2026) token selection: top-ratio mask and the LATF ratio controller.

AdaKD measures each token's difficulty as the Hellinger distance s_i between
teacher and student distributions at T = 1 and trains only on the top r of
valid tokens by s_i. LATF (loss-aware token focusing) adapts r from the
training loss (DESIGN §3, baselines):

* EMA of the loss with β = 0.99; the first loss initialises it.
* When warm-up (``warmup_frac`` of ``total_steps``) ends, the EMA becomes the reference.
* Afterwards, per optimizer step: if EMA < ref·(1 − ε) (the student is
  improving) r ← max(r_min, r·(1 − δ)), focusing on fewer, harder tokens; if
  EMA > ref·(1 + ε) (it is struggling) r ← min(1, r·(1 + δ)); after either
  adjustment the reference is reset to the current EMA.

IDTS temperature lives in :mod:`egad_cli.policies.temperature`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .routing import top_fraction_mask, top_k_count

__all__ = ["LATF", "top_ratio_mask"]


@torch.no_grad()
def top_ratio_mask(hellinger: torch.Tensor, valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """The top ``ratio`` of valid tokens by Hellinger difficulty.

    Count ``max(1, ceil(ratio · n_valid))`` when any token is valid (so the loss is
    never empty), 0 otherwise; ties broken by lower index first (see routing).

    Args:
        hellinger: [N] per-token Hellinger distance.
        valid: [N] bool; invalid tokens are never selected.
        ratio: fraction in [0, 1].
    Returns:
        [N] bool.
    """
    if not (0.0 <= ratio <= 1.0):
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    n_valid = int(valid.sum())
    k = max(1, top_k_count(ratio, n_valid)) if n_valid > 0 else 0
    return top_fraction_mask(hellinger, valid, k)


class LATF:
    """AdaKD's loss-aware token-ratio controller.

    Call :meth:`update` once after every optimizer step with ``step`` = the number
    of optimizer steps completed so far (1 after the first step) and the step's
    loss. The warm-up ends at the update whose ``step`` reaches
    ``warmup_steps = round(warmup_frac · total_steps)``: that update fixes the
    reference, adaptation starts with the next one. While warming up, r = r0.

    Interpretation: the reference is reset whenever a rule fires, including when
    the cap (1) or floor (r_min) leaves r numerically unchanged, so the reference
    always marks the EMA of the last decision.

    Args:
        total_steps: planned optimizer steps of the run.
        r0: initial ratio, in [r_min, 1].
        beta: EMA decay of the loss.
        warmup_frac: fraction of total_steps before the reference is set.
        eps: relative dead band around the reference.
        delta: relative change of r per adjustment.
        r_min: floor of r.
    """

    def __init__(
        self,
        total_steps: int,
        r0: float = 1.0,
        beta: float = 0.99,
        warmup_frac: float = 0.05,
        eps: float = 0.05,
        delta: float = 0.05,
        r_min: float = 0.1,
    ) -> None:
        problems = []
        if int(total_steps) < 1:
            problems.append(f"total_steps must be >= 1, got {total_steps}")
        if not (0.0 < r_min <= 1.0):
            problems.append(f"r_min must be in (0, 1], got {r_min}")
        if not (r_min <= r0 <= 1.0):
            problems.append(f"r0 must be in [r_min={r_min}, 1], got {r0}")
        if not (0.0 <= beta < 1.0):
            problems.append(f"beta must be in [0, 1), got {beta}")
        if not (0.0 <= warmup_frac <= 1.0):
            problems.append(f"warmup_frac must be in [0, 1], got {warmup_frac}")
        if not eps >= 0.0:
            problems.append(f"eps must be >= 0, got {eps}")
        if not (0.0 <= delta < 1.0):
            problems.append(f"delta must be in [0, 1), got {delta}")
        if problems:
            raise ValueError("invalid LATF settings: " + "; ".join(problems))
        self.total_steps = int(total_steps)
        self.beta = float(beta)
        self.warmup_frac = float(warmup_frac)
        self.eps = float(eps)
        self.delta = float(delta)
        self.r_min = float(r_min)
        self.warmup_steps = round(self.warmup_frac * self.total_steps)
        self._ratio = float(r0)
        self.ema: float | None = None
        self.ref: float | None = None
        self.last_step: int | None = None

    @property
    def ratio(self) -> float:
        """Current fraction r of valid tokens to train on."""
        return self._ratio

    def update(self, step: int, loss: float) -> float:
        """Feed the loss of optimizer step ``step``; returns the (possibly new) ratio."""
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"LATF got a non-finite loss {loss} at step {step}")
        self.ema = loss if self.ema is None else self.beta * self.ema + (1.0 - self.beta) * loss
        self.last_step = int(step)
        if self.ref is None:
            if step >= self.warmup_steps:
                self.ref = self.ema        # warm-up just ended
            return self._ratio
        if self.ema < self.ref * (1.0 - self.eps):
            self._ratio = max(self.r_min, self._ratio * (1.0 - self.delta))
            self.ref = self.ema
        elif self.ema > self.ref * (1.0 + self.eps):
            self._ratio = min(1.0, self._ratio * (1.0 + self.delta))
            self.ref = self.ema
        return self._ratio

    def state_dict(self) -> dict[str, Any]:
        return {"ratio": self._ratio, "ema": self.ema, "ref": self.ref, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ratio = float(state["ratio"])
        self.ema = None if state["ema"] is None else float(state["ema"])
        self.ref = None if state["ref"] is None else float(state["ref"])
        self.last_step = None if state.get("last_step") is None else int(state["last_step"])
