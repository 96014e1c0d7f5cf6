"""Feature distillation for EGAD's dual branch (DESIGN §3, item 3).

Hard tokens get, on top of the logit divergence, a loss between student and teacher hidden states
on mapped layers: φ_i = Σ_pairs (1 − cos(W_l h_S,i, h_T,i)) (or a per-dimension MSE), where W_l is
a learned student-dim → teacher-dim projector. The caller gathers the hard positions first (M of
them), so the projectors only ever see [M, D] tensors. Projectors train with the student and are
not part of the exported student.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from egad_cli.config.policies import FEATURE_KINDS  # the one list of feature-loss kinds

__all__ = ["FEATURE_KINDS", "FeatureProjectors", "default_layer_map"]


def default_layer_map(n_student_layers: int, n_teacher_layers: int, n_pairs: int) -> list[tuple[int, int]]:
    """Pairs (l_S, l_T) of ``output_hidden_states`` indices (1..L; index 0 is the embeddings).

    The student layers are n evenly spaced ones ending at the last, l_S = round(k · L_S / n) for
    k = 1..n with n = min(n_pairs, L_S), and each maps to the teacher layer at the same relative
    depth, l_T = round(l_S · L_T / L_S) (so the last layers always pair up). Rounding is half-up,
    not Python's banker's rounding, so the map does not depend on parity. Sorted, no duplicates.
    """
    if n_student_layers < 1 or n_teacher_layers < 1:
        raise ValueError(
            f"layer counts must be >= 1, got student {n_student_layers}, teacher {n_teacher_layers}"
        )
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    l_s, l_t = n_student_layers, n_teacher_layers
    n = min(n_pairs, l_s)

    def half_up(x: float) -> int:
        return math.floor(x + 0.5)

    pairs = set()
    for k in range(1, n + 1):
        s = half_up(k * l_s / n)  # spacing L_S / n >= 1 keeps these distinct
        t = max(1, half_up(s * l_t / l_s))
        pairs.add((s, t))
    return sorted(pairs)


class FeatureProjectors(nn.Module):
    """One bias-free ``nn.Linear(student_dim, teacher_dim)`` per layer pair, plus the per-token loss.

    Initialised (semi-)orthogonal: for student_dim <= teacher_dim, W has orthonormal columns, so
    ‖W h‖ = ‖h‖ and the initial projection neither shrinks nor blows up the student features
    (which matters for the MSE kind; cosine is scale-free).
    """

    def __init__(self, student_dim: int, teacher_dim: int, layer_map: Sequence[tuple[int, int]]):
        super().__init__()
        if not layer_map:
            raise ValueError("layer_map must contain at least one (student_layer, teacher_layer) pair")
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.layer_map: list[tuple[int, int]] = [(int(s), int(t)) for s, t in layer_map]
        self.proj = nn.ModuleList(nn.Linear(student_dim, teacher_dim, bias=False) for _ in self.layer_map)
        for lin in self.proj:
            nn.init.orthogonal_(lin.weight)

    def forward(self, s_states: Sequence[Tensor], t_states: Sequence[Tensor], kind: str = "cosine") -> Tensor:
        """Per-token feature loss φ, summed over the layer pairs.

        Args:
            s_states: one [M, Ds] student hidden-state tensor per pair (same order as layer_map).
            t_states: one [M, Dt] teacher hidden-state tensor per pair; may be inference tensors.
            kind: "cosine" -> Σ_pairs (1 − cos(W h_S, h_T)); "mse" -> Σ_pairs mean_d (W h_S − h_T)².

        Returns:
            [M] fp32, differentiable w.r.t. the projectors and s_states (never the teacher).
        """
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature loss kind {kind!r}; valid choices: {', '.join(FEATURE_KINDS)}")
        if len(s_states) != len(self.proj) or len(t_states) != len(self.proj):
            raise ValueError(
                f"expected {len(self.proj)} student and teacher states (one per pair of {self.layer_map}), "
                f"got {len(s_states)} and {len(t_states)}"
            )
        phi = None
        for lin, h_s, h_t in zip(self.proj, s_states, t_states):
            proj = F.linear(h_s.float(), lin.weight.float())  # [M, Dt]
            # Teacher features are constants. An inference tensor cannot be saved for backward,
            # so clone it into a normal tensor (only M hard rows: cheap).
            target = h_t.detach().float()  # [M, Dt]
            if target.is_inference():
                target = target.clone()
            if kind == "cosine":
                term = 1.0 - F.cosine_similarity(proj, target, dim=-1, eps=1e-8)  # [M]
            else:
                term = (proj - target).square().mean(dim=-1)  # [M]
            phi = term if phi is None else phi + term
        return phi
