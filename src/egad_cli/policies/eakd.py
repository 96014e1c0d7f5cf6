"""EA-KD (ICCV 2025) per-token weights.

EA-KD up-weights tokens on which the teacher is uncertain (high entropy: the
soft targets carry the most "dark knowledge"), and further where the student
is uncertain too:

    w_i = ½ · H^T_i · (1 + H^S_i / log|V|)

with both entropies taken at the temperature T' = 2 (computed by the caller)
and detached. Whether the loss is normalised by Σ w (paper) or by the token
count (EA-KD's reference code) is decided by the loss combination, not here.
"""

from __future__ import annotations

import math

import torch

__all__ = ["eakd_weights"]


@torch.no_grad()
def eakd_weights(
    H_t_T2: torch.Tensor, H_s_T2: torch.Tensor, valid: torch.Tensor, vocab_size: int
) -> torch.Tensor:
    """EA-KD token weights.

    Args:
        H_t_T2: [N] teacher entropy at T' = 2 (nats).
        H_s_T2: [N] student entropy at T' = 2 (nats).
        valid: [N] bool.
        vocab_size: |V| (>= 2).
    Returns:
        w: [N] fp32, ``½ H^T (1 + H^S / log|V|)`` on valid tokens, 0 elsewhere, detached.
    """
    if H_t_T2.dim() != 1 or H_t_T2.shape != H_s_T2.shape or valid.shape != H_t_T2.shape:
        raise ValueError(
            "H_t_T2, H_s_T2 and valid must be flat [N] of one shape, got "
            f"{tuple(H_t_T2.shape)}, {tuple(H_s_T2.shape)}, {tuple(valid.shape)}"
        )
    if int(vocab_size) < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    h_t = H_t_T2.detach().float()
    h_s = H_s_T2.detach().float()
    w = 0.5 * h_t * (1.0 + h_s / math.log(int(vocab_size)))      # [N]
    return torch.where(valid, w, torch.zeros_like(w))
