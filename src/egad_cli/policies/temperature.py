"""Per-token distillation temperature τ_i.

The loss divides both teacher and student logits of token i by τ_i and
multiplies its divergence by τ_i² (DESIGN §3.2); this module only decides τ.

* ``fixed``    τ_i = τ_base for every token (Hinton KD).
* ``entropy``  EGAD: τ_i = clip(τ_base · exp(κ · (2u_i − 1)), τ_min, τ_max).
               With κ > 0 hard (high-entropy) tokens are softened further and
               easy ones sharpened; κ < 0 flips the direction.
* ``idts``     AdaKD's inverse-difficulty temperature scaling:
               τ_i = τ_base · exp(−c · tanh(ln(s_i / median s))) with s_i the
               student–teacher Hellinger distance: tokens harder than the
               median get a lower temperature (sharper targets), easier ones
               a higher one; τ = τ_base exactly at the median.

All inputs are flat [N]; invalid tokens get τ_base (finite and positive, and
they carry weight 0 anyway). Outputs are fp32 and detached.
"""

from __future__ import annotations

import math

import torch

from .base import TokenPolicy
from .stats import DIFFICULTY, HELLINGER, StepStats

__all__ = [
    "EntropyTemperature",
    "FixedTemperature",
    "IDTSTemperature",
    "Temperature",
    "entropy_temperature",
    "fixed_temperature",
    "idts_temperature",
    "valid_median",
]


def _check_base(base: float) -> None:
    if not (math.isfinite(base) and base > 0):
        raise ValueError(f"base temperature must be a finite positive number, got {base}")


def _check_range(t_min: float | None, t_max: float | None) -> None:
    if t_min is not None and not t_min > 0:
        raise ValueError(f"t_min must be > 0, got {t_min}")
    if t_min is not None and t_max is not None and t_min > t_max:
        raise ValueError(f"t_min ({t_min}) must be <= t_max ({t_max})")


def _check_flat(x: torch.Tensor, valid: torch.Tensor, name: str) -> None:
    if x.dim() != 1 or valid.shape != x.shape:
        raise ValueError(
            f"{name} and valid must be flat [N] tensors of one shape, "
            f"got {tuple(x.shape)} and {tuple(valid.shape)}"
        )


def fixed_temperature(
    n: int, base: float = 1.0, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """τ [n] = base everywhere (fp32)."""
    _check_base(base)
    return torch.full((int(n),), float(base), dtype=torch.float32, device=device)


@torch.no_grad()
def entropy_temperature(
    u: torch.Tensor,
    valid: torch.Tensor,
    base: float = 1.0,
    kappa: float = 0.5,
    t_min: float = 0.5,
    t_max: float = 2.0,
) -> torch.Tensor:
    """EGAD's entropy-adaptive temperature.

    Args:
        u: [N] difficulty in [0, 1].
        valid: [N] bool.
    Returns:
        tau: [N] fp32, ``clip(base · exp(κ(2u − 1)), t_min, t_max)``; ``base`` on invalid tokens.
    """
    _check_base(base)
    _check_range(t_min, t_max)
    _check_flat(u, valid, "u")
    u = u.detach().float()
    tau = (base * torch.exp(kappa * (2.0 * u - 1.0))).clamp_(t_min, t_max)   # [N]
    return torch.where(valid, tau, torch.full_like(tau, base))


@torch.no_grad()
def valid_median(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Median of ``x[valid]`` as a 0-dim fp32 tensor (mean of the two middle values
    for an even count; 0 when nothing is valid). Sort-based: no size limit, unlike
    ``torch.quantile``."""
    v, _ = torch.sort(x.detach().float()[valid])                # [n]
    n = v.numel()
    if n == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    return 0.5 * (v[(n - 1) // 2] + v[n // 2])


@torch.no_grad()
def idts_temperature(
    difficulty_s: torch.Tensor,
    valid: torch.Tensor,
    base: float = 1.0,
    c: float = 0.5,
    t_min: float | None = None,
    t_max: float | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """AdaKD's IDTS: ``τ_i = base · exp(−c · tanh(ln(s_i / median_valid(s))))``, optionally clipped.

    The tanh already bounds τ to [base·e^{−c}, base·e^{c}], so clipping is off by
    default (``None``), as in AdaKD; pass ``t_min``/``t_max`` to clip anyway.
    s_i and the median are floored at ``eps`` so zero distances (student equals
    teacher) give τ = base·e^{c} rather than NaN, and an all-zero batch gives base.

    Args:
        difficulty_s: [N] per-token difficulty s_i >= 0 (Hellinger distance at T = 1).
        valid: [N] bool; the median is over valid tokens only.
    Returns:
        tau: [N] fp32, ``base`` on invalid tokens.
    """
    _check_base(base)
    _check_range(t_min, t_max)
    _check_flat(difficulty_s, valid, "difficulty_s")
    s = difficulty_s.detach().float()
    med = valid_median(s, valid).clamp_min(eps)                 # []
    ratio = s.clamp_min(eps) / med                              # [N]
    tau = base * torch.exp(-c * torch.tanh(torch.log(ratio)))   # [N]
    if t_min is not None or t_max is not None:
        tau = tau.clamp(t_min, t_max)
    return torch.where(valid, tau, torch.full_like(tau, base))


# --------------------------------------------------------------------------- policy objects


class Temperature(TokenPolicy):
    """``tau = policy(stats)``: [N] fp32, detached; stateless. Built from a ``temperature=`` node."""

    def __call__(self, stats: StepStats) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class FixedTemperature(Temperature):
    needs = frozenset()

    def __init__(self, base: float = 1.0) -> None:
        _check_base(base)
        self.base = float(base)

    def __call__(self, stats: StepStats) -> torch.Tensor:
        return fixed_temperature(stats.valid.numel(), self.base, device=stats.valid.device)


class EntropyTemperature(Temperature):
    needs = frozenset({DIFFICULTY})

    def __init__(self, base: float = 1.0, kappa: float = 0.5, t_min: float = 0.5, t_max: float = 2.0) -> None:
        _check_base(base)
        _check_range(t_min, t_max)
        self.base, self.kappa, self.t_min, self.t_max = float(base), float(kappa), float(t_min), float(t_max)

    def __call__(self, stats: StepStats) -> torch.Tensor:
        return entropy_temperature(stats[DIFFICULTY], stats.valid, self.base, self.kappa, self.t_min, self.t_max)


class IDTSTemperature(Temperature):
    needs = frozenset({HELLINGER})

    def __init__(
        self,
        base: float = 1.0,
        c: float = 0.5,
        t_min: float | None = None,
        t_max: float | None = None,
        eps: float = 1e-8,
    ) -> None:
        _check_base(base)
        _check_range(t_min, t_max)
        self.base, self.c, self.t_min, self.t_max, self.eps = float(base), float(c), t_min, t_max, float(eps)

    def __call__(self, stats: StepStats) -> torch.Tensor:
        return idts_temperature(stats[HELLINGER], stats.valid, self.base, self.c, self.t_min, self.t_max, self.eps)
