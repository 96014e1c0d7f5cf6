"""The interface every token policy shares: what it reads, what it logs, what it checkpoints."""

from __future__ import annotations

from typing import Any

from .stats import Stat

__all__ = ["TokenPolicy"]


class TokenPolicy:
    """A per-token policy built from its config node (``egad_cli.config.policies``).

    ``needs`` declares the statistics it reads from the step's :class:`~.stats.StepStats`; the unit
    computes the union of what its policies declare and nothing else. Stateful policies
    (AdaKD's ratio controller, the running quantile) override ``state_dict``/``load_state_dict``;
    the unit checkpoints every policy alike.
    """

    needs: frozenset[Stat] = frozenset()

    def logs(self) -> dict[str, float]:
        """Values of this step to log (before the optimizer step)."""
        return {}

    def end_step(self, step: int, logs: dict[str, float]) -> dict[str, float]:
        """Called after optimizer step ``step`` with its logs; returns values to add to them."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
