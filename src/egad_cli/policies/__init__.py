"""Token-level policies: difficulty, curriculum weights, method weighting, temperature, routing.

Each policy object is built from its config node (``egad_cli.config.policies``), declares the
per-token statistics it reads (``needs``, see :mod:`.stats`) and is called with the step's
:class:`~.stats.StepStats`. The pure functions beside them work on flat per-token tensors [N] plus
a bool ``valid`` mask and return detached fp32 (or bool) tensors. See DESIGN §3.
"""

from .adakd import LATF, top_ratio_mask
from .base import TokenPolicy
from .curriculum import MODES, SCHEDULES, Curriculum, pacing
from .difficulty import (
    Difficulty,
    NormalizedDifficulty,
    RankDifficulty,
    RunningQuantileDifficulty,
    normalized_difficulty,
    rank_difficulty,
)
from .eakd import eakd_weights
from .routing import NoRouting, TopFractionRouting, hard_token_mask, top_fraction_mask, top_k_count
from .stats import (
    DIFFICULTY,
    HELLINGER,
    Stat,
    StepStats,
    stats_pass_request,
    student_entropy,
    teacher_entropy,
)
from .temperature import (
    EntropyTemperature,
    FixedTemperature,
    IDTSTemperature,
    Temperature,
    entropy_temperature,
    fixed_temperature,
    idts_temperature,
    valid_median,
)
from .weighting import AdaKDWeighting, EAKDWeighting, UniformWeighting

__all__ = [
    "DIFFICULTY",
    "HELLINGER",
    "LATF",
    "MODES",
    "SCHEDULES",
    "AdaKDWeighting",
    "Curriculum",
    "Difficulty",
    "EAKDWeighting",
    "EntropyTemperature",
    "FixedTemperature",
    "IDTSTemperature",
    "NoRouting",
    "NormalizedDifficulty",
    "RankDifficulty",
    "RunningQuantileDifficulty",
    "Stat",
    "StepStats",
    "Temperature",
    "TokenPolicy",
    "TopFractionRouting",
    "UniformWeighting",
    "eakd_weights",
    "entropy_temperature",
    "fixed_temperature",
    "hard_token_mask",
    "idts_temperature",
    "normalized_difficulty",
    "pacing",
    "rank_difficulty",
    "stats_pass_request",
    "student_entropy",
    "teacher_entropy",
    "top_fraction_mask",
    "top_k_count",
    "top_ratio_mask",
    "valid_median",
]
