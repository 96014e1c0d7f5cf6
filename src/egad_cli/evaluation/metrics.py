"""Held-out metrics of a student against its teacher, from per-token values.

Conventions (all per valid held-out token, natural log):

* perplexity = exp(mean NLL of the next-token label);
* KL forward = KL(teacher ‖ student), KL reverse = KL(student ‖ teacher), mean over tokens, nats;
* top-1 agreement = share of tokens where the student's argmax equals the teacher's argmax;
* ECE (expected calibration error) = Σ_b (n_b / N) · |acc_b − conf_b| over ``n_bins`` (default 15)
  equal-width bins of the model's top-1 probability ("confidence"); bin b holds confidences in
  (b/n, (b+1)/n] (confidence 0 goes to the first bin), acc_b is the share of its tokens whose
  top-1 prediction equals the label and conf_b their mean confidence (Guo et al. 2017);
* entropy buckets: tokens ranked by teacher entropy and cut into ``n`` equal-count groups
  (deciles for n = 10), so bucket 1 holds the teacher's most certain tokens and bucket n the
  hardest ones: the view that shows whether the hard tokens improved.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from egad_cli.losses.divergences import entropy, forward_kl, reverse_kl

__all__ = ["by_entropy_bucket", "calibration_bins", "expected_calibration_error", "pair_summary",
           "perplexity", "quantile_buckets", "token_metrics"]


def _mean(x: Tensor) -> float:
    return float(x.double().mean()) if x.numel() else math.nan


def perplexity(nll: Tensor) -> float:
    """exp(mean NLL) of per-token negative log-likelihoods [N]; nan for no token."""
    if nll.numel() == 0:
        return math.nan
    return math.exp(min(_mean(nll), 700.0))  # exp(700) is near the float64 limit; beyond it inf is useless


def calibration_bins(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> list[dict]:
    """Reliability diagram: per equal-width confidence bin, {lo, hi, n, confidence, accuracy}.

    confidence: [N] top-1 probability in [0, 1]; correct: [N] 1 where the top-1 equals the label.
    Bin b holds (b/n_bins, (b+1)/n_bins]; a confidence of exactly 0 falls into bin 0.
    """
    conf = confidence.double().clamp(0.0, 1.0)
    corr = correct.double()
    idx = (torch.ceil(conf * n_bins) - 1).clamp(0, n_bins - 1).long()  # [N] right-closed bins
    n = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    corr_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, corr)
    rows = []
    for b in range(n_bins):
        count = int(n[b])
        rows.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "n": count,
                     "confidence": float(conf_sum[b] / count) if count else None,
                     "accuracy": float(corr_sum[b] / count) if count else None})
    return rows


def expected_calibration_error(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> float:
    """ECE = Σ_b (n_b / N) · |acc_b − conf_b| over equal-width confidence bins; nan for no token."""
    total = confidence.numel()
    if total == 0:
        return math.nan
    return sum(r["n"] / total * abs(r["accuracy"] - r["confidence"])
               for r in calibration_bins(confidence, correct, n_bins) if r["n"])


def quantile_buckets(values: Tensor, n: int) -> Tensor:
    """Bucket index [N] in [0, n) by rank: equal-count quantile groups, ties broken by position.

    Rank-based rather than by quantile edges, so many tied values (e.g. entropy exactly 0) still
    give equal-size buckets.
    """
    total = values.numel()
    order = torch.sort(values.float(), stable=True).indices
    bucket = torch.empty(total, dtype=torch.long)
    bucket[order] = torch.arange(total) * n // max(total, 1)
    return bucket


def pair_summary(m: dict[str, Tensor], ece_bins: int = 15) -> dict[str, float]:
    """Scalar metrics from per-token values (the keys of ``token_metrics`` plus
    ``confidence_teacher`` / ``correct_teacher`` when present)."""
    out = {
        "n_tokens": int(m["kl_forward"].numel()),
        "ppl_student": perplexity(m["nll_student"]),
        "ppl_teacher": perplexity(m["nll_teacher"]),
        "kl_forward": _mean(m["kl_forward"]),
        "kl_reverse": _mean(m["kl_reverse"]),
        # nan marks a token where agreement is undefined (cross-tokenizer: the teacher's argmax has no shared
        # string, evaluation.cross): left out of the mean
        "top1_agreement": _mean(m["top1_agree"][~m["top1_agree"].isnan()]),
        "ece": expected_calibration_error(m["confidence"], m["correct"], ece_bins),
        "acc_student": _mean(m["correct"]),
        "entropy_teacher": _mean(m["entropy_teacher"]),
        "entropy_student": _mean(m["entropy_student"]),
    }
    if "confidence_teacher" in m:
        out["ece_teacher"] = expected_calibration_error(m["confidence_teacher"], m["correct_teacher"],
                                                        ece_bins)
        out["acc_teacher"] = _mean(m["correct_teacher"])
    return out


def by_entropy_bucket(m: dict[str, Tensor], n_buckets: int = 10, ece_bins: int = 15) -> list[dict]:
    """``pair_summary`` per teacher-entropy quantile bucket (1 = lowest entropy), with its entropy range."""
    H = m["entropy_teacher"]
    bucket = quantile_buckets(H, n_buckets)
    rows = []
    for b in range(n_buckets):
        sel = bucket == b
        if not bool(sel.any()):
            continue
        part = {k: v[sel] for k, v in m.items() if v.shape == H.shape}
        rows.append({"bucket": b + 1, "entropy_lo": float(H[sel].min()), "entropy_hi": float(H[sel].max()),
                     **pair_summary(part, ece_bins)})
    return rows


@torch.no_grad()
def token_metrics(t_logits: Tensor, s_logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Per-token metrics from fp32 logits [N, V] and next-token ids [N]; every value is [N]."""
    t_logp, s_logp = t_logits.float().log_softmax(-1), s_logits.float().log_softmax(-1)
    s_conf, s_pred = s_logp.max(-1)
    t_pred = t_logp.argmax(-1)
    return {
        "kl_forward": forward_kl(t_logp, s_logp),
        "kl_reverse": reverse_kl(t_logp, s_logp),
        "nll_teacher": -t_logp.gather(1, targets[:, None]).squeeze(1),
        "nll_student": -s_logp.gather(1, targets[:, None]).squeeze(1),
        "top1_agree": (s_pred == t_pred).float(),
        "confidence": s_conf.exp(),
        "correct": (s_pred == targets).float(),
        "entropy_teacher": entropy(t_logp),
        "entropy_student": entropy(s_logp),
    }
