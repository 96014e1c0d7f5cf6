"""Token-level policies: difficulty, curriculum weights, temperature, routing, baselines.

Every function works on flat per-token tensors [N] plus a bool ``valid`` mask
and returns detached fp32 (or bool) tensors; stateful policies expose
``state_dict`` / ``load_state_dict`` for checkpoints. See DESIGN §3.
"""

from .adakd import LATF, top_ratio_mask
from .curriculum import MODES, SCHEDULES, Curriculum, pacing
from .difficulty import (
    DIFFICULTIES,
    Difficulty,
    NormalizedDifficulty,
    RankDifficulty,
    RunningQuantileDifficulty,
    make_difficulty,
    normalized_difficulty,
    rank_difficulty,
)
from .eakd import eakd_weights
from .routing import hard_token_mask, top_fraction_mask, top_k_count
from .temperature import (
    TEMPERATURES,
    EntropyTemperature,
    FixedTemperature,
    IDTSTemperature,
    Temperature,
    entropy_temperature,
    fixed_temperature,
    idts_temperature,
    make_temperature,
    valid_median,
)

__all__ = [
    "DIFFICULTIES",
    "LATF",
    "MODES",
    "SCHEDULES",
    "TEMPERATURES",
    "Curriculum",
    "Difficulty",
    "EntropyTemperature",
    "FixedTemperature",
    "IDTSTemperature",
    "NormalizedDifficulty",
    "RankDifficulty",
    "RunningQuantileDifficulty",
    "Temperature",
    "eakd_weights",
    "entropy_temperature",
    "fixed_temperature",
    "hard_token_mask",
    "idts_temperature",
    "make_difficulty",
    "make_temperature",
    "normalized_difficulty",
    "pacing",
    "rank_difficulty",
    "top_fraction_mask",
    "top_k_count",
    "top_ratio_mask",
    "valid_median",
]
