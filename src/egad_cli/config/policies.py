"""Config nodes of the token policies and divergences: one dataclass per option.

Each option of a policy group (``temperature=entropy``, ``weighting=adakd``, ``loss=jsd`` …) is its
own dataclass, registered in that group's :class:`Registry` — the one list of choices — so a field
exists only where it means something (``temperature.kappa`` only under ``temperature=entropy``).
Every node

* checks its bounds in ``problems()`` (called by ``validate()`` before any model is loaded), and
* builds its policy object with ``build(ctx)`` (or, for a divergence, ``divergence()``), importing
  the implementation only then: composing and validating never import torch.

Adding an option is one dataclass here plus its implementation (see CONTRIBUTING.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

from egad_cli.config.problems import Problems
from egad_cli.config.registry import Registry

FEATURE_KINDS = ("cosine", "mse")
WEIGHT_NORMS = ("sum_w", "token_count")
CURRICULUM_MODES = ("soft", "hard")


@dataclass(frozen=True)
class PolicyContext:
    """What building a policy may need besides its own node."""

    vocab_size: int  #: |V| of the shared vocabulary (a cross-tokenizer run: the teacher's)
    total_steps: int = 1  #: planned optimizer steps of the run
    student_vocab_size: int | None = None  #: a student with its own tokenizer: its |V| (None: vocab_size)

    @property
    def student_vocab(self) -> int:
        """|V| of the student's distributions (what a student entropy is normalised by)."""
        return self.vocab_size if self.student_vocab_size is None else self.student_vocab_size


def _unit_interval(out: Problems, value: float, key: str, *, low_open: bool, high_open: bool) -> None:
    ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    out.check(ok, key, f"must be in {'(' if low_open else '['}0, 1{')' if high_open else ']'} (got {value})")


def _temperature_range(out: Problems, t_min: float, t_max: float, group: str) -> None:
    out.check(t_min > 0, f"{group}.t_min", f"must be > 0 (got {t_min})")
    out.check(t_max >= t_min, f"{group}.t_min, {group}.t_max", f"need t_min <= t_max (got {t_min}, {t_max})")


# ============================================================================ difficulty

DIFFICULTIES = Registry("difficulty", "difficulty estimator")


@dataclass
class DifficultyConfig:
    """How the teacher's entropy H_i becomes the difficulty u_i in [0, 1] that the curriculum, the
    entropy temperature and the dual branch read."""

    name: str = MISSING  #: the option (set by the group choice)

    def problems(self, out: Problems) -> None:
        pass

    def build(self, ctx: PolicyContext):  # pragma: no cover - every option overrides it
        raise NotImplementedError


@DIFFICULTIES.option
@dataclass
class RankDifficultyConfig(DifficultyConfig):
    """Percentile rank of H_i among the valid tokens of the optimizer step (scale-free; the default)."""

    name: str = "rank"

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.difficulty import RankDifficulty

        return RankDifficulty()


@DIFFICULTIES.option
@dataclass
class NormalizedDifficultyConfig(DifficultyConfig):
    """H_i / log|V| (absolute; depends on the vocabulary size)."""

    name: str = "normalized"

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.difficulty import NormalizedDifficulty

        return NormalizedDifficulty(ctx.vocab_size)


@DIFFICULTIES.option
@dataclass
class RunningQuantileDifficultyConfig(DifficultyConfig):
    """CDF of H_i under a histogram of every valid token seen so far (stable for small batches)."""

    name: str = "running_quantile"
    n_bins: int = 1024  #: histogram bins over [0, log|V|]

    def problems(self, out: Problems) -> None:
        out.check(self.n_bins >= 1, "difficulty.n_bins", f"must be >= 1 (got {self.n_bins})")

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.difficulty import RunningQuantileDifficulty

        return RunningQuantileDifficulty(n_bins=self.n_bins, vocab_size=ctx.vocab_size)


# ============================================================================ weighting

WEIGHTINGS = Registry("weighting", "token weighting")


@dataclass
class WeightingConfig:
    """Per-token loss weights of a method (multiplied with the curriculum's), and the normaliser."""

    name: str = MISSING  #: the option (set by the group choice)
    norm: str = "sum_w"  #: sum_w (divide by Σw, DESIGN §3) | token_count (divide by the valid-token count)
    #: the weighting picks its own tokens, so an entropy curriculum on top would fight it
    selects_tokens: ClassVar[bool] = False
    #: reads the teacher–student Hellinger distance, which compares p and q entry by entry over one vocabulary
    #: (so a student with its own tokenizer is refused before anything is trained: ``schema.cross_problems``)
    one_vocabulary: ClassVar[bool] = False

    def problems(self, out: Problems) -> None:
        out.choice(self.norm, "weighting.norm", WEIGHT_NORMS)

    def build(self, ctx: PolicyContext):  # pragma: no cover - every option overrides it
        raise NotImplementedError


@WEIGHTINGS.option
@dataclass
class UniformWeightingConfig(WeightingConfig):
    """Every valid token weighs 1 (before the curriculum)."""

    name: str = "uniform"

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.weighting import UniformWeighting

        return UniformWeighting()


@WEIGHTINGS.option
@dataclass
class EAKDWeightingConfig(WeightingConfig):
    """EA-KD (ICCV 2025): w_i = ½ H^T_i (1 + H^S_i / log|V|), both entropies at T′ = ``temperature``.
    ``norm=token_count`` reproduces the reference code; ``sum_w`` (default) is the paper."""

    name: str = "eakd"
    temperature: float = 2.0  #: T′ at which both entropies are measured

    def problems(self, out: Problems) -> None:
        super().problems(out)
        out.check(self.temperature > 0, "weighting.temperature", f"must be > 0 (got {self.temperature})")

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.weighting import EAKDWeighting

        return EAKDWeighting(self.temperature, ctx.student_vocab)  # log|V| normalises the student's entropy


@WEIGHTINGS.option
@dataclass
class AdaKDWeightingConfig(WeightingConfig):
    """AdaKD (AAAI 2026): train on the top r of tokens by teacher–student Hellinger distance; LATF adapts r."""

    name: str = "adakd"
    r0: float = 1.0  #: initial token ratio r, in [r_min, 1]
    beta: float = 0.99  #: EMA coefficient of the loss
    warmup_frac: float = 0.05  #: share of steps before the reference loss is set
    eps: float = 0.05  #: relative tolerance band around the reference
    delta: float = 0.05  #: relative step of r per adjustment, in [0, 1)
    r_min: float = 0.1  #: floor of r
    selects_tokens: ClassVar[bool] = True
    one_vocabulary: ClassVar[bool] = True

    def problems(self, out: Problems) -> None:
        super().problems(out)
        _unit_interval(out, self.r_min, "weighting.r_min", low_open=True, high_open=False)
        out.check(self.r_min <= self.r0 <= 1, "weighting.r0", f"must be in [r_min={self.r_min}, 1] (got {self.r0})")
        _unit_interval(out, self.beta, "weighting.beta", low_open=False, high_open=True)
        _unit_interval(out, self.warmup_frac, "weighting.warmup_frac", low_open=False, high_open=True)
        out.check(self.eps >= 0, "weighting.eps", f"must be >= 0 (got {self.eps})")
        _unit_interval(out, self.delta, "weighting.delta", low_open=False, high_open=True)

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.weighting import AdaKDWeighting

        return AdaKDWeighting(ctx.total_steps, r0=self.r0, beta=self.beta, warmup_frac=self.warmup_frac,
                              eps=self.eps, delta=self.delta, r_min=self.r_min)


# ============================================================================ temperature

TEMPERATURES = Registry("temperature", "temperature policy")
TEMPERATURE_SCALES = ("tau2", "none", "mean1")  #: what multiplies a token's divergence (``policies.temperature``)


@dataclass
class TemperatureConfig:
    """Per-token temperature τ_i (detached; the divergence is scaled by τ_i²)."""

    name: str = MISSING  #: the option (set by the group choice)
    base: float = 1.0  #: τ_base
    #: what multiplies token i's divergence: tau2 (τ_i², Hinton), none (1: τ shapes the targets only), mean1
    #: (τ_i² / its mean over the step's tokens)
    scale: str = "tau2"
    one_vocabulary: ClassVar[bool] = False  #: as ``WeightingConfig.one_vocabulary``

    def problems(self, out: Problems) -> None:
        out.check(self.base > 0, "temperature.base", f"must be > 0 (got {self.base})")
        out.check(self.scale in TEMPERATURE_SCALES, "temperature.scale",
                  f"must be one of {', '.join(TEMPERATURE_SCALES)} (got {self.scale!r})")

    def tau_range(self) -> tuple[float, float]:
        """The smallest and largest τ_i this policy can set (a teacher cache must cover them)."""
        return self.base, self.base

    def build(self, ctx: PolicyContext):
        return self.policy(ctx).with_scale(self.scale)

    def policy(self, ctx: PolicyContext):  # pragma: no cover - every option overrides it
        raise NotImplementedError


@TEMPERATURES.option
@dataclass
class FixedTemperatureConfig(TemperatureConfig):
    """τ_i = base for every token (Hinton KD)."""

    name: str = "fixed"

    def policy(self, ctx: PolicyContext):
        from egad_cli.policies.temperature import FixedTemperature

        return FixedTemperature(self.base)


@TEMPERATURES.option
@dataclass
class EntropyTemperatureConfig(TemperatureConfig):
    """EGAD: τ_i = clip(base · exp(κ (2u_i − 1)), t_min, t_max); κ < 0 flips the direction."""

    name: str = "entropy"
    kappa: float = 0.5  #: κ
    t_min: float = 0.5  #: lower clip
    t_max: float = 2.0  #: upper clip

    def problems(self, out: Problems) -> None:
        super().problems(out)
        _temperature_range(out, self.t_min, self.t_max, "temperature")

    def policy(self, ctx: PolicyContext):
        from egad_cli.policies.temperature import EntropyTemperature

        return EntropyTemperature(self.base, self.kappa, self.t_min, self.t_max)

    def tau_range(self) -> tuple[float, float]:
        return self.t_min, self.t_max


@TEMPERATURES.option
@dataclass
class IDTSTemperatureConfig(TemperatureConfig):
    """AdaKD's IDTS: τ_i = base · exp(−c · tanh(ln(s_i / median s))), s_i the Hellinger distance."""

    name: str = "idts"
    c: float = 0.5  #: strength c
    t_min: float = 0.25  #: lower clip
    t_max: float = 4.0  #: upper clip
    one_vocabulary: ClassVar[bool] = True

    def problems(self, out: Problems) -> None:
        super().problems(out)
        _temperature_range(out, self.t_min, self.t_max, "temperature")

    def policy(self, ctx: PolicyContext):
        from egad_cli.policies.temperature import IDTSTemperature

        return IDTSTemperature(self.base, self.c, self.t_min, self.t_max)

    def tau_range(self) -> tuple[float, float]:
        return self.t_min, self.t_max


@TEMPERATURES.option
@dataclass
class TargetEntropyTemperatureConfig(TemperatureConfig):
    """After CIST: per token the τ_i at which the tempered teacher's entropy H(p^{1/τ_i}) equals ``target``
    (nats; null: the step's median teacher entropy at T = 1), found on ``grid`` and interpolated in log τ,
    kept within the grid. Each grid temperature is one teacher entropy of the statistics pass."""

    name: str = "target_entropy"
    target: Optional[float] = None  #: nats; null = the step's median teacher entropy at T = 1
    #: temperatures at which the teacher's entropy is measured; τ_i stays within [min, max] of them
    grid: list[float] = field(default_factory=lambda: [0.5, 0.7071, 1.0, 1.4142, 2.0])

    def problems(self, out: Problems) -> None:
        super().problems(out)
        grid = list(self.grid)
        out.check(len(grid) >= 2 and all(t > 0 for t in grid) and len(set(grid)) == len(grid), "temperature.grid",
                  f"must hold at least two distinct positive temperatures (got {grid})")
        out.check(self.target is not None or 1.0 in grid, "temperature.grid",
                  f"the median target (temperature.target=null) reads the entropy at T = 1: add 1.0 (got {grid})")
        out.check(self.target is None or self.target >= 0, "temperature.target",
                  f"must be an entropy >= 0 nats, or null for the step's median (got {self.target})")

    def policy(self, ctx: PolicyContext):
        from egad_cli.policies.temperature import TargetEntropyTemperature

        return TargetEntropyTemperature(tuple(self.grid), self.target, self.base)

    def tau_range(self) -> tuple[float, float]:
        return min(self.grid), max(self.grid)


# ============================================================================ curriculum

CURRICULA = Registry("curriculum", "curriculum schedule", key="schedule")


@dataclass
class CurriculumConfig:
    """Entropy curriculum: token weights that move from easy to hard tokens over training."""

    schedule: str = MISSING  #: the option (set by the group choice)

    def problems(self, out: Problems) -> None:
        pass

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.curriculum import Curriculum

        return Curriculum(self.schedule)


@CURRICULA.option
@dataclass
class NoCurriculumConfig(CurriculumConfig):
    """No curriculum: weight 1 on every valid token."""

    schedule: str = "none"


@dataclass
class PacedCurriculumConfig(CurriculumConfig):
    """A pacing c(s) that reaches 1 at progress s = rho, applied softly or as a gate."""

    mode: str = "soft"  #: soft (exponential re-weighting) | hard (competence gating)
    rho: float = 0.8  #: progress s at which the pacing c(s) reaches 1
    gamma: float = 1.0  #: soft: sharpness γ
    c0: float = 0.3  #: hard: share of difficulty admitted at s = 0

    def problems(self, out: Problems) -> None:
        out.choice(self.mode, "curriculum.mode", CURRICULUM_MODES)
        _unit_interval(out, self.rho, "curriculum.rho", low_open=True, high_open=False)
        out.check(self.gamma >= 0, "curriculum.gamma", f"must be >= 0 (got {self.gamma})")
        _unit_interval(out, self.c0, "curriculum.c0", low_open=False, high_open=False)

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.curriculum import Curriculum

        return Curriculum(self.schedule, self.mode, self.rho, self.gamma, self.c0)


@CURRICULA.option
@dataclass
class LinearCurriculumConfig(PacedCurriculumConfig):
    """c(s) = s/ρ."""

    schedule: str = "linear"


@CURRICULA.option
@dataclass
class CosineCurriculumConfig(PacedCurriculumConfig):
    """c(s) = ½(1 − cos(π s/ρ))."""

    schedule: str = "cosine"


@CURRICULA.option
@dataclass
class SqrtCurriculumConfig(PacedCurriculumConfig):
    """c(s) = √(s/ρ)."""

    schedule: str = "sqrt"


@CURRICULA.option
@dataclass
class StepCurriculumConfig(PacedCurriculumConfig):
    """c(s) = ⌊(s/ρ) · n_stages⌋ / n_stages."""

    schedule: str = "step"
    n_stages: int = 4  #: number of stages

    def problems(self, out: Problems) -> None:
        super().problems(out)
        out.check(self.n_stages >= 1, "curriculum.n_stages", f"must be >= 1 (got {self.n_stages})")

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.curriculum import Curriculum

        return Curriculum(self.schedule, self.mode, self.rho, self.gamma, self.c0, self.n_stages)


# ============================================================================ branch (routing)

BRANCHES = Registry("branch", "branch")


@dataclass
class BranchConfig:
    """Which tokens also get feature distillation (the routing policy)."""

    name: str = MISSING  #: the option (set by the group choice)
    features: ClassVar[bool] = False  #: whether hard tokens get the feature loss (projectors are built)

    def problems(self, out: Problems) -> None:
        pass

    def build(self, ctx: PolicyContext):  # pragma: no cover - every option overrides it
        raise NotImplementedError


@BRANCHES.option
@dataclass
class LogitsOnlyBranchConfig(BranchConfig):
    """Logit distillation on every token, no feature loss."""

    name: str = "logits_only"

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.routing import NoRouting

        return NoRouting()


@BRANCHES.option
@dataclass
class DualBranchConfig(BranchConfig):
    """EGAD's dual branch: the top q of valid tokens by u also get a feature loss on mapped layers."""

    name: str = "dual"
    q: float = 0.3  #: share of valid tokens (highest u) that are hard
    mu: float = 1.0  #: weight μ of the feature loss
    n_pairs: int = 2  #: mapped layer pairs (last layer + evenly spaced)
    feature_loss: str = "cosine"  #: cosine | mse
    projector_lr_mult: float = 1.0  #: learning-rate multiplier of the projectors
    features: ClassVar[bool] = True

    def problems(self, out: Problems) -> None:
        _unit_interval(out, self.q, "branch.q", low_open=False, high_open=False)
        out.check(self.mu >= 0, "branch.mu", f"must be >= 0 (got {self.mu})")
        out.check(self.n_pairs >= 1, "branch.n_pairs", f"must be >= 1 (got {self.n_pairs})")
        out.choice(self.feature_loss, "branch.feature_loss", FEATURE_KINDS)
        out.check(self.projector_lr_mult >= 0, "branch.projector_lr_mult",
                  f"must be >= 0 (got {self.projector_lr_mult})")

    def build(self, ctx: PolicyContext):
        from egad_cli.policies.routing import TopFractionRouting

        return TopFractionRouting(self.q)


# ============================================================================ loss (divergence)

LOSSES = Registry("loss", "divergence")


@dataclass
class LossConfig:
    """The per-token divergence D(p ‖ q) and how the vocabulary-sized logits are chunked."""

    name: str = MISSING  #: the option (set by the group choice)
    chunk_size: Any = "auto"  #: tokens per chunk of vocabulary-sized logits: auto (from memory_mb and V) or a number
    memory_mb: float = 1024  #: chunk_size=auto: MiB for the loss's vocabulary-sized fp32 temporaries
    keep_teacher_logits_mb: float = 512  #: reuse the stats pass's teacher logits in the loss up to this many MiB a step

    #: fp32 [chunk, V] tensors the chunked loss holds at once (built-in divergences, live teacher; ``losses.chunked``)
    LIVE_TEMPORARIES: ClassVar[int] = 4
    #: the divergence is a sum of per-vocabulary-entry terms ψ(p(v), q(v)): a sampled teacher cache estimates it
    #: without bias (``losses.sampled``); tests/losses/test_sampled.py checks the flag against the function
    PER_ENTRY: ClassVar[bool] = True
    #: every per-entry term carries the teacher's probability as a factor (ψ → 0 as p → 0): a sampled cache's
    #: draws then estimate it with bounded weights. Otherwise (reverse KL, JSD, skew reverse KL, TVD) a term
    #: carries the student's mass q on ids the teacher rarely emits, weighted by 1 / π: unbiased but so noisy
    #: that training on it diverged; a sampled cache serves these through its bucketed view (losses.sampled)
    TEACHER_WEIGHTED: ClassVar[bool] = False

    def problems(self, out: Problems) -> None:
        size = self.chunk_size
        out.check(size == "auto" or (isinstance(size, int) and not isinstance(size, bool) and size > 0),
                  "loss.chunk_size", f"must be auto or a positive number of tokens (got {size!r})")
        out.check(self.memory_mb > 0, "loss.memory_mb", f"must be > 0 (got {self.memory_mb})")
        out.check(self.keep_teacher_logits_mb >= 0, "loss.keep_teacher_logits_mb",
                  f"must be >= 0 (0: always recompute; got {self.keep_teacher_logits_mb})")

    def chunk_rows(self, vocab_size: int) -> int:
        """Tokens per chunk: chunk_size, or (auto) as many as fit LIVE_TEMPORARIES fp32 [chunk, V]
        tensors in memory_mb (1,365 at V = 49,152 and 1 GiB; 523 at V = 128,256)."""
        if self.chunk_size != "auto":
            return int(self.chunk_size)
        return max(1, int(self.memory_mb * 2**20) // (self.LIVE_TEMPORARIES * vocab_size * 4))

    def divergence(self) -> Callable:  # pragma: no cover - every option overrides it
        """fn(t_logp [N, V], s_logp [N, V]) -> [N], with this node's hyperparameters bound."""
        raise NotImplementedError


@LOSSES.option
@dataclass
class ForwardKLConfig(LossConfig):
    """KL(p ‖ q): mass-covering, the classic KD loss."""

    name: str = "forward_kl"
    TEACHER_WEIGHTED: ClassVar[bool] = True

    def divergence(self) -> Callable:
        from egad_cli.losses.divergences import forward_kl

        return forward_kl


@LOSSES.option
@dataclass
class ReverseKLConfig(LossConfig):
    """KL(q ‖ p): mode-seeking."""

    name: str = "reverse_kl"

    def divergence(self) -> Callable:
        from egad_cli.losses.divergences import reverse_kl

        return reverse_kl


@LOSSES.option
@dataclass
class JSDConfig(LossConfig):
    """Generalised JSD with mixture weight β: β KL(p ‖ m) + (1 − β) KL(q ‖ m), m = βp + (1 − β)q."""

    name: str = "jsd"
    beta: float = 0.5  #: mixture weight β

    def problems(self, out: Problems) -> None:
        super().problems(out)
        _unit_interval(out, self.beta, "loss.beta", low_open=True, high_open=True)

    def divergence(self) -> Callable:
        from egad_cli.losses.divergences import jsd

        return functools.partial(jsd, beta=self.beta)


@dataclass
class SkewConfig(LossConfig):
    alpha: float = 0.1  #: skew α

    def problems(self, out: Problems) -> None:
        super().problems(out)
        _unit_interval(out, self.alpha, "loss.alpha", low_open=True, high_open=True)


@LOSSES.option
@dataclass
class SkewFKLConfig(SkewConfig):
    """Skew forward KL (DistiLLM): KL(p ‖ αp + (1 − α)q)."""

    name: str = "skew_fkl"
    TEACHER_WEIGHTED: ClassVar[bool] = True

    def divergence(self) -> Callable:
        from egad_cli.losses.divergences import skew_fkl

        return functools.partial(skew_fkl, alpha=self.alpha)


@LOSSES.option
@dataclass
class SkewRKLConfig(SkewConfig):
    """Skew reverse KL (DistiLLM): KL(q ‖ αq + (1 − α)p)."""

    name: str = "skew_rkl"

    def divergence(self) -> Callable:
        from egad_cli.losses.divergences import skew_rkl

        return functools.partial(skew_rkl, alpha=self.alpha)


@LOSSES.option
@dataclass
class TVDConfig(LossConfig):
    """Total variation distance ½ Σ_v |p(v) − q(v)|."""

    name: str = "tvd"

    def divergence(self) -> Callable:
        from egad_cli.losses.divergences import tvd

        return tvd


@LOSSES.option
@dataclass
class EntropyGatedKLConfig(LossConfig):
    """EOPD: reverse KL on every token plus forward KL where the teacher's entropy exceeds a threshold."""

    name: str = "entropy_gated_kl"
    PER_ENTRY: ClassVar[bool] = False  #: the gate reads the whole row's entropy
    threshold: float = 1.0  #: teacher entropy (nats) above which the forward-KL term is added
    fkl_weight: float = 1.0  #: weight of that forward-KL term

    def problems(self, out: Problems) -> None:
        super().problems(out)
        out.check(self.threshold >= 0, "loss.threshold", f"must be >= 0 nats (got {self.threshold})")
        out.check(self.fkl_weight >= 0, "loss.fkl_weight", f"must be >= 0 (got {self.fkl_weight})")

    def divergence(self) -> Callable:
        from egad_cli.losses.divergences import entropy_gated_kl

        return functools.partial(entropy_gated_kl, threshold=self.threshold, fkl_weight=self.fkl_weight)


#: every policy group, in the order a config lists them
POLICY_REGISTRIES: tuple[Registry, ...] = (LOSSES, DIFFICULTIES, CURRICULA, TEMPERATURES, WEIGHTINGS, BRANCHES)


def registry_problems(typed: Any, out: Problems) -> None:
    """Every policy node of ``typed`` (a command config) is the option its name says, and within its bounds."""
    for registry in POLICY_REGISTRIES:
        node = getattr(typed, registry.group, None)
        if node is not None:
            problem = registry.name_problem(node)
            if problem:
                out.append(problem)
            node.problems(out)
