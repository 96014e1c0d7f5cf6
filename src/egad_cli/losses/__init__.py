"""Losses: per-token divergences, the chunked (memory-efficient) distillation loss, feature loss."""

from .chunked import chunked_distill_loss, chunked_token_stats
from .divergences import (
    Divergence,
    entropy,
    entropy_gated_kl,
    forward_kl,
    hellinger,
    jsd,
    reverse_kl,
    skew_fkl,
    skew_rkl,
    tvd,
)
from .feature import FEATURE_KINDS, FeatureProjectors, default_layer_map

__all__ = [
    "FEATURE_KINDS",
    "Divergence",
    "FeatureProjectors",
    "chunked_distill_loss",
    "chunked_token_stats",
    "default_layer_map",
    "entropy",
    "entropy_gated_kl",
    "forward_kl",
    "hellinger",
    "jsd",
    "reverse_kl",
    "skew_fkl",
    "skew_rkl",
    "tvd",
]
