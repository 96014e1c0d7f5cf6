"""Token weighting of a method (``weighting=`` group): multiplied with the curriculum's weights.

* ``uniform``  every valid token weighs 1.
* ``eakd``     EA-KD: ½ H^T (1 + H^S / log|V|) at T′ (:func:`.eakd.eakd_weights`).
* ``adakd``    AdaKD: 1 on the top r of valid tokens by Hellinger distance, 0 elsewhere; LATF adapts r
               after every optimizer step from the logit loss (:class:`.adakd.LATF`).
"""

from __future__ import annotations

from typing import Any

import torch

from .adakd import LATF, top_ratio_mask
from .base import TokenPolicy
from .eakd import eakd_weights
from .stats import HELLINGER, StepStats, student_entropy, teacher_entropy

__all__ = ["AdaKDWeighting", "EAKDWeighting", "UniformWeighting"]


class UniformWeighting(TokenPolicy):
    needs = frozenset()

    def __call__(self, stats: StepStats) -> torch.Tensor:
        return stats.valid.float()  # [N]


class EAKDWeighting(TokenPolicy):
    def __init__(self, temperature: float, vocab_size: int) -> None:
        if not temperature > 0:
            raise ValueError(f"EA-KD temperature must be > 0, got {temperature}")
        self.teacher, self.student = teacher_entropy(temperature), student_entropy(temperature)
        self.needs = frozenset({self.teacher, self.student})
        self.vocab_size = int(vocab_size)

    def __call__(self, stats: StepStats) -> torch.Tensor:
        return eakd_weights(stats[self.teacher], stats[self.student], stats.valid, self.vocab_size)  # [N]


class AdaKDWeighting(TokenPolicy):
    needs = frozenset({HELLINGER})

    def __init__(self, total_steps: int, **latf: float) -> None:
        self.latf = LATF(total_steps, **latf)

    def __call__(self, stats: StepStats) -> torch.Tensor:
        return top_ratio_mask(stats[HELLINGER], stats.valid, self.latf.ratio).float()  # [N]

    def logs(self) -> dict[str, float]:
        return {"adakd_ratio": self.latf.ratio}

    def end_step(self, step: int, logs: dict[str, float]) -> dict[str, float]:
        # LATF follows the distillation term (the loss it selects tokens for), not the total.
        return {"adakd_ratio_next": self.latf.update(step, logs["loss_logit"])}

    def state_dict(self) -> dict[str, Any]:
        return self.latf.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.latf.load_state_dict(state)
