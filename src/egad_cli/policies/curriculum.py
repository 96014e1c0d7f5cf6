"""Entropy curriculum: per-token loss weights that move from easy to hard tokens.

DESIGN §3.1. Training progress s in [0, 1] is mapped by a pacing schedule to
c(s) in [0, 1], which reaches 1 at s = ρ. Then, for difficulty u_i in [0, 1]:

* soft (default): ``w_i = exp(γ · (2c − 1) · (2u_i − 1))`` renormalised to
  mean 1 over the valid tokens. At c = 0 low-u (easy) tokens weigh most, at
  c = 0.5 all weights are 1, at c = 1 high-u (hard) tokens weigh most.
* hard (competence gating): ``w_i = 1[u_i ≤ c0 + (1 − c0) · c(s)]``, so the
  student first sees only the easiest c0 fraction, then everything by s = ρ.

Schedule ``none`` disables the curriculum: w = 1 on every valid token.
"""

from __future__ import annotations

import math

import torch

from egad_cli.config.policies import CURRICULA, CURRICULUM_MODES

from .base import TokenPolicy
from .stats import DIFFICULTY, StepStats

__all__ = ["MODES", "SCHEDULES", "Curriculum", "pacing"]

SCHEDULES = tuple(CURRICULA)  # the registry of the curriculum= group is the one list
MODES = CURRICULUM_MODES

# s/ρ is a float quotient: 0.6/0.8 == 0.7499999999999999, which would put the
# "step" schedule one stage late exactly on a stage boundary. Stage boundaries
# are therefore taken with this tolerance.
_STEP_EPS = 1e-9


def pacing(schedule: str, s: float, rho: float = 0.8, n_stages: int = 4) -> float:
    """Curriculum pace c(s) in [0, 1] for training progress s in [0, 1].

    With x = min(1, s/ρ): linear x; cosine ½(1 − cos πx); sqrt √x;
    step ⌊x · n_stages⌋ / n_stages; none 1 (no curriculum).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown curriculum schedule {schedule!r}; valid choices: {', '.join(SCHEDULES)}")
    s = float(s)
    if not (0.0 <= s <= 1.0):
        raise ValueError(f"training progress s must be in [0, 1], got {s}")
    if not (rho > 0):
        raise ValueError(f"rho must be > 0, got {rho}")
    if int(n_stages) < 1:
        raise ValueError(f"n_stages must be >= 1, got {n_stages}")
    if schedule == "none":
        return 1.0
    x = min(1.0, s / rho)
    if schedule == "linear":
        return x
    if schedule == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * x))
    if schedule == "sqrt":
        return math.sqrt(x)
    # step
    return math.floor(x * n_stages + _STEP_EPS) / n_stages


class Curriculum(TokenPolicy):
    """Token weights ``w [N]`` from difficulty ``u [N]`` and progress ``s``.

    Args:
        schedule: pacing schedule, one of :data:`SCHEDULES`.
        mode: ``soft`` (reweighting) or ``hard`` (competence gating).
        rho: progress at which c(s) reaches 1.
        gamma: soft-mode sharpness γ: the weight ratio between u = 1 and u = 0 is e^{2γ·|2c − 1|}.
        c0: hard-mode fraction of difficulty admitted at s = 0.
        n_stages: number of stages of the ``step`` schedule.

    Stateless given s (the engine's step defines s), so ``state_dict`` is empty;
    it exists so the engine can checkpoint every policy the same way.
    """

    def __init__(
        self,
        schedule: str,
        mode: str = "soft",
        rho: float = 0.8,
        gamma: float = 1.0,
        c0: float = 0.3,
        n_stages: int = 4,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown curriculum mode {mode!r}; valid choices: {', '.join(MODES)}")
        if not (0.0 <= c0 <= 1.0):
            raise ValueError(f"c0 must be in [0, 1], got {c0}")
        if not math.isfinite(gamma):
            raise ValueError(f"gamma must be finite, got {gamma}")
        pacing(schedule, 0.0, rho, n_stages)  # validates schedule, rho, n_stages up front
        self.schedule = schedule
        # schedule none reads no difficulty: kd-style runs need no teacher statistics for it
        self.needs = frozenset() if schedule == "none" else frozenset({DIFFICULTY})
        self.mode = mode
        self.rho = float(rho)
        self.gamma = float(gamma)
        self.c0 = float(c0)
        self.n_stages = int(n_stages)

    def pace(self, s: float) -> float:
        """c(s) for this curriculum's schedule."""
        return pacing(self.schedule, s, self.rho, self.n_stages)

    def gate(self, s: float) -> float:
        """Hard-mode threshold ``c0 + (1 − c0) · c(s)``: tokens with u ≤ gate are kept."""
        return self.c0 + (1.0 - self.c0) * self.pace(s)

    @torch.no_grad()
    def weights(self, u: torch.Tensor, valid: torch.Tensor, s: float) -> torch.Tensor:
        """Per-token weights.

        Args:
            u: [N] difficulty in [0, 1].
            valid: [N] bool.
            s: training progress in [0, 1].
        Returns:
            w: [N] fp32, 0 on invalid tokens, detached. Soft mode: mean 1 (to rounding) over
            valid tokens (all zeros if none is valid). Hard mode: 0/1, not renormalised.
        """
        if u.dim() != 1 or valid.shape != u.shape:
            raise ValueError(
                f"u and valid must be flat [N] of one shape, got {tuple(u.shape)}, {tuple(valid.shape)}"
            )
        u = u.detach().float()
        zero = torch.zeros_like(u)
        if self.schedule == "none":
            self.pace(s)  # still validates s
            return valid.float()
        if self.mode == "hard":
            keep = (u <= self.gate(s)) & valid                   # [N] bool
            return keep.float()
        c = self.pace(s)
        if u.numel() == 0:
            return zero
        z = self.gamma * (2.0 * c - 1.0) * (2.0 * u - 1.0)              # [N] log-weights
        # Renormalisation makes w invariant to a shift of z; subtracting the max keeps a
        # large γ from overflowing exp.
        z_max = torch.where(valid, z, torch.full_like(z, -math.inf)).amax()
        w = torch.where(valid, torch.exp(z - z_max), zero)               # [N]
        n_valid = valid.sum().float()
        # No host sync: with no valid token both sums are 0 and the result is 0, not NaN.
        return w * (n_valid / w.sum().clamp_min(torch.finfo(w.dtype).tiny))   # mean 1 over valid

    def __call__(self, stats: StepStats) -> torch.Tensor:
        """w [N] for this step (see :meth:`weights`)."""
        if self.schedule == "none":
            return self.weights(torch.zeros_like(stats.valid, dtype=torch.float32), stats.valid, stats.progress)
        return self.weights(stats[DIFFICULTY], stats.valid, stats.progress)
