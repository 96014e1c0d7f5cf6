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
* ``target_entropy``  after CIST's consistent-information soft labels: per token the τ_i at which the
               tempered teacher's entropy H(p_i^{1/τ_i}) equals a target (a value in nats, or the step's
               median teacher entropy at T = 1), within [τ_min, τ_max]. Confident tokens are softened,
               uncertain ones sharpened, so every soft label carries about the same information.

The divergence of token i is multiplied by a factor f_i that the ``scale`` of every temperature chooses
(``divergence_factor``): ``tau2`` f_i = τ_i² (Hinton's gradient-scale correction, which also makes τ a
token weight: up to 4× at τ = 2), ``none`` f_i = 1 (τ changes the shape of the targets only), ``mean1``
f_i = τ_i² / mean_valid(τ²) (the correction's average kept at 1, its spread across tokens kept).

All inputs are flat [N]; invalid tokens get τ_base (finite and positive, and
they carry weight 0 anyway). Outputs are fp32 and detached.
"""

from __future__ import annotations

import math

import torch

from egad_cli.config.policies import TEMPERATURE_SCALES

from .base import TokenPolicy
from .stats import DIFFICULTY, HELLINGER, StepStats, teacher_entropy

__all__ = [
    "SCALES",
    "EntropyTemperature",
    "FixedTemperature",
    "IDTSTemperature",
    "TargetEntropyTemperature",
    "Temperature",
    "divergence_factor",
    "entropy_temperature",
    "fixed_temperature",
    "idts_temperature",
    "target_entropy_temperature",
    "valid_median",
]


#: what multiplies token i's divergence: τ_i², 1, or τ_i² over its mean on the step's valid tokens (the one list
#: lives beside the config node, which must not import torch)
SCALES = TEMPERATURE_SCALES


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


@torch.no_grad()
def target_entropy_temperature(
    entropies: torch.Tensor,
    grid: torch.Tensor,
    target: torch.Tensor | float,
    valid: torch.Tensor,
    base: float = 1.0,
) -> torch.Tensor:
    """Per token the temperature at which the tempered teacher's entropy reaches ``target``.

    H_i(τ) = H(softmax(logits_i / τ)) increases with τ (from the entropy of the argmax set at τ → 0 to
    log|V| at τ → ∞; a constant for a one-hot or uniform row), so the root is bracketed by the grid:
    τ_i = the smallest τ on [grid[0], grid[-1]] with H_i(τ) ≥ target, with log τ interpolated linearly
    between the two grid points that bracket the target. The true root lies in the same bracket (H is
    monotone), so the error is at most one grid step in log τ, and much less on a smooth H. A target below
    H_i(grid[0]) gives grid[0] (a near-uniform row cannot be sharpened enough); above H_i(grid[-1]) gives
    grid[-1] (a near one-hot row cannot be softened enough).

    Args:
        entropies: [N, G] H_i at each grid temperature (fp32; rounding may break monotonicity by an ulp:
            a running max restores it).
        grid: [G] increasing temperatures.
        target: a value in nats, or [N] per-token targets.
        valid: [N] bool.
    Returns:
        tau: [N] fp32, ``base`` on invalid tokens.
    """
    _check_base(base)
    n, g = entropies.shape
    if grid.dim() != 1 or grid.numel() != g or g < 2 or not bool((grid[1:] > grid[:-1]).all()) or grid[0] <= 0:
        raise ValueError(f"grid must be [G >= 2] increasing positive temperatures matching entropies [N, G], got "
                         f"{grid.tolist()} for {tuple(entropies.shape)}")
    if valid.shape != (n,):
        raise ValueError(f"valid must be [N] = [{n}], got {tuple(valid.shape)}")
    h = torch.cummax(entropies.detach().float(), dim=1).values  # [N, G] non-decreasing in τ
    tgt = torch.as_tensor(target, dtype=torch.float32, device=h.device).expand(n).contiguous()  # [N]
    log_grid = grid.to(h.device, torch.float32).log()  # [G]
    hi = torch.searchsorted(h, tgt[:, None], side="left").squeeze(1)  # [N] first grid index with H ≥ target
    j = hi.clamp(1, g - 1)  # [N] the bracket [j − 1, j]
    h0, h1 = h.gather(1, (j - 1)[:, None]).squeeze(1), h.gather(1, j[:, None]).squeeze(1)  # [N]
    frac = ((tgt - h0) / (h1 - h0).clamp_min(torch.finfo(torch.float32).tiny)).clamp(0.0, 1.0)  # [N]
    log_tau = torch.lerp(log_grid[j - 1], log_grid[j], frac)  # [N]
    log_tau = torch.where(hi == 0, log_grid[0], torch.where(hi == g, log_grid[-1], log_tau))
    tau = log_tau.exp()
    return torch.where(valid, tau, torch.full_like(tau, base))


@torch.no_grad()
def divergence_factor(tau: torch.Tensor, valid: torch.Tensor, scale: str = "tau2") -> torch.Tensor:
    """f [N] fp32 that multiplies each token's divergence at temperature τ (see ``SCALES``); detached.
    ``mean1`` divides by the mean of τ² over the valid tokens given (the whole step: call it on every
    rank's tokens); with none valid it is τ²."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    t2 = tau.detach().float().square()  # [N]
    if scale == "tau2":
        return t2
    if scale == "none":
        return torch.ones_like(t2)
    n = valid.sum()
    mean = torch.where(n > 0, (t2 * valid).sum() / n.clamp_min(1), torch.ones((), device=t2.device))
    return t2 / mean


# --------------------------------------------------------------------------- policy objects


class Temperature(TokenPolicy):
    """``tau = policy(stats)``: [N] fp32, detached; stateless. Built from a ``temperature=`` node.
    ``factor(tau, valid)``: what multiplies each token's divergence (``divergence_factor`` by ``scale``)."""

    scale: str = "tau2"

    def __call__(self, stats: StepStats) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def with_scale(self, scale: str) -> Temperature:
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        self.scale = scale
        return self

    def factor(self, tau: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return divergence_factor(tau, valid, self.scale)


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


class TargetEntropyTemperature(Temperature):
    """τ_i with H(p_i^{1/τ_i}) = target on ``grid`` (``target_entropy_temperature``); target None: the
    step's median teacher entropy at T = 1 over its valid tokens (1.0 must then be on the grid)."""

    def __init__(self, grid: tuple[float, ...] = (0.5, 0.7071, 1.0, 1.4142, 2.0), target: float | None = None,
                 base: float = 1.0) -> None:
        _check_base(base)
        grid = tuple(sorted(float(t) for t in grid))
        if len(grid) < 2 or grid[0] <= 0 or len(set(grid)) != len(grid):
            raise ValueError(f"grid must hold at least two distinct positive temperatures, got {grid}")
        if target is None and 1.0 not in grid:
            raise ValueError(f"the median target reads the entropy at T = 1: put 1.0 in the grid {grid}")
        if target is not None and not (math.isfinite(target) and target >= 0):
            raise ValueError(f"target must be a finite entropy >= 0 nats, got {target}")
        self.grid, self.target, self.base = grid, target, float(base)
        self.needs = frozenset(teacher_entropy(t) for t in grid)
        self._last_target = float("nan")

    def __call__(self, stats: StepStats) -> torch.Tensor:
        valid = stats.valid
        h = torch.stack([stats[teacher_entropy(t)] for t in self.grid], dim=1)  # [N, G]
        target = valid_median(stats[teacher_entropy(1.0)], valid) if self.target is None else self.target
        self._last_target = float(target)
        grid = torch.tensor(self.grid, dtype=torch.float32, device=h.device)
        return target_entropy_temperature(h, grid, target, valid, self.base)

    def logs(self) -> dict[str, float]:
        return {"tau_target_entropy": self._last_target}
