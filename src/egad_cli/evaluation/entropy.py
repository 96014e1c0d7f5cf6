"""What egad inspect-entropy computes from one pass: histogram, quantiles, policy thresholds,
tokens ranked by mean entropy, and the profile by position. Pure functions of per-token tensors."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from egad_cli.config.policies import (
    BranchConfig,
    CurriculumConfig,
    DifficultyConfig,
    DualBranchConfig,
    PolicyContext,
)
from egad_cli.policies import DIFFICULTY, StepStats, top_k_count

QUANTILES = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
PROGRESS_POINTS = (0.0, 0.5, 1.0)


def histogram(values: Tensor, bins: int, lo: float = 0.0,
              hi: float | None = None) -> tuple[list[float], list[int]]:
    """Equal-width bins over [lo, hi] (hi: the largest value, rounded up to a multiple of 0.5 nats).

    Returns (edges [bins + 1], counts [bins]); the last bin includes hi, so counts sum to N.
    """
    x = values.double().numpy()
    if hi is None:
        hi = math.ceil(float(x.max()) * 2) / 2 if x.size else 1.0
    hi = max(hi, lo + 1e-6)
    counts, edges = np.histogram(np.clip(x, lo, hi), bins=bins, range=(lo, hi))
    return [float(e) for e in edges], [int(c) for c in counts]


def quantiles(values: Tensor, qs: tuple[float, ...] = QUANTILES) -> dict[str, float]:
    """{'mean', 'std', 'min', 'p1', …, 'p99', 'max'} of a 1-D tensor."""
    x = values.double().numpy()
    out = {"mean": float(x.mean()), "std": float(x.std()), "min": float(x.min())}
    out.update({f"p{round(q * 100)}": float(v) for q, v in zip(qs, np.quantile(x, qs))})
    out["max"] = float(x.max())
    return out


def thresholds(H: Tensor, vocab: int, difficulty: DifficultyConfig, curriculum: CurriculumConfig,
               branch: BranchConfig, points: tuple[float, ...] = PROGRESS_POINTS) -> dict:
    """The entropy cuts the configured policies would apply to these tokens (all of them taken as one step).

    u comes from the configured difficulty policy. hard: the dual branch's hard tokens (top q by u):
    their lowest entropy, count and share — with branch=logits_only, what the default dual branch
    would route (``active`` false). gates: per training progress s, the curriculum pace c(s), the
    hard-mode gate c0 + (1 − c0)·c(s) on u (``Curriculum.gate``), the highest entropy a gated
    token may have, the share of tokens the gate admits, and the soft-mode weight ratio between
    the hardest and the easiest token, exp(2γ(2c − 1)). Which of gate/weights is in force
    depends on the curriculum's mode (``active``); schedule none applies neither.
    """
    ctx = PolicyContext(vocab_size=vocab)
    valid = torch.ones_like(H, dtype=torch.bool)
    u = difficulty.build(ctx)(H, valid)
    dual = branch if branch.features else DualBranchConfig()  # what the dual branch would do
    hard = dual.build(ctx)(StepStats(valid, 0.0, {DIFFICULTY: u}))
    n = H.numel()
    cur = curriculum.build(ctx)
    out = {
        "difficulty": difficulty.name,
        "hard": {"branch": branch.name, "active": branch.features, "q": dual.q,
                 "tokens": int(hard.sum()), "share": top_k_count(dual.q, n) / n if n else 0.0,
                 "entropy_min": float(H[hard].min()) if bool(hard.any()) else None},
        "curriculum": {"schedule": cur.schedule, "mode": cur.mode,
                       "active": "none" if cur.schedule == "none" else cur.mode},
        "gates": [],
    }
    for s in points:
        c, gate = cur.pace(s), cur.gate(s)
        keep = u <= gate
        out["gates"].append({
            "s": s, "pace": c, "gate": gate,
            "entropy_max": float(H[keep].max()) if bool(keep.any()) else None,
            "share": float(keep.float().mean()) if n else 0.0,
            "soft_weight_ratio": 1.0 if cur.schedule == "none" else math.exp(2.0 * cur.gamma * (2.0 * c - 1.0)),
        })
    return out


def token_ranking(H: Tensor, targets: Tensor, min_count: int, top: int) -> tuple[list[dict], list[dict]]:
    """(highest, lowest) tokens by mean entropy of the prediction of that token.

    Each entry: {token_id, mean, count, example}: ``example`` indexes the occurrence whose entropy
    is closest to the token's mean (a typical context). Only tokens seen at least ``min_count``
    times are ranked (all tokens if none is).
    """
    ids, inverse, counts = torch.unique(targets, return_inverse=True, return_counts=True)
    sums = torch.zeros(ids.numel(), dtype=torch.float64).index_add_(0, inverse, H.double())
    means = sums / counts
    eligible = counts >= min_count
    if not bool(eligible.any()):
        eligible = torch.ones_like(eligible)
    candidates = torch.nonzero(eligible).squeeze(1)
    order = candidates[torch.argsort(means[candidates], descending=True, stable=True)]
    distance = (H.double() - means[inverse]).abs()

    def entry(j: int) -> dict:
        occurrences = torch.nonzero(inverse == j).squeeze(1)
        example = int(occurrences[torch.argmin(distance[occurrences])])
        return {"token_id": int(ids[j]), "mean": float(means[j]), "count": int(counts[j]), "example": example}

    highest = [entry(int(j)) for j in order[:top]]
    lowest = [entry(int(j)) for j in order.flip(0)[:top]]
    return highest, lowest


def position_profile(position: Tensor, values: dict[str, Tensor], n_buckets: int,
                     n_positions: int) -> list[dict]:
    """Mean of each value per equal-width bucket of positions in [0, n_positions).

    position is the index of the context's last token (the model saw position + 1 tokens).
    """
    n_buckets = max(1, min(n_buckets, n_positions))
    bucket = (position.long() * n_buckets) // n_positions
    rows = []
    for b in range(n_buckets):
        sel = bucket == b
        lo, hi = -(-b * n_positions // n_buckets), -(-(b + 1) * n_positions // n_buckets) - 1
        row = {"positions": [int(lo), int(hi)], "count": int(sel.sum())}
        for name, v in values.items():
            row[name] = float(v[sel].double().mean()) if bool(sel.any()) else None
        rows.append(row)
    return rows


def printable(text: str) -> str:
    """A token or context on one line: newline ↵, tab ⇥, other control characters as \\xNN."""
    out = text.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in out)
