"""What a token policy may ask for: per-token statistics of the step, declared as `Stat`s.

A policy lists the statistics it reads in ``needs``; the distillation unit takes the union over
the chosen policies, computes exactly those in its no-grad pass (running the student only when a
student statistic is asked for) and hands them to every policy in a :class:`StepStats`. Nothing
dispatches on a policy's name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import Tensor

__all__ = ["DIFFICULTY", "HELLINGER", "Stat", "StepStats", "stats_pass_request", "student_entropy",
           "teacher_entropy"]


@dataclass(frozen=True)
class Stat:
    """One per-token statistic [N] of an optimizer step.

    kind: ``teacher_entropy`` / ``student_entropy`` (at ``temperature``), ``hellinger`` (teacher vs
    student at T = 1), or ``difficulty`` (u in [0, 1], made by the difficulty policy from the
    teacher's entropy at T = 1).
    """

    kind: str
    temperature: float = 1.0

    @property
    def key(self) -> str:
        """The name ``chunked_token_stats`` gives it (and the one in error messages)."""
        if self.kind.endswith("_entropy"):
            return f"{self.kind}@{self.temperature:g}"
        return self.kind

    @property
    def needs_student(self) -> bool:
        return self.kind in ("student_entropy", "hellinger")


def teacher_entropy(temperature: float = 1.0) -> Stat:
    return Stat("teacher_entropy", float(temperature))


def student_entropy(temperature: float = 1.0) -> Stat:
    return Stat("student_entropy", float(temperature))


HELLINGER = Stat("hellinger")
DIFFICULTY = Stat("difficulty")


def stats_pass_request(needs: Iterable[Stat]) -> dict:
    """The keyword arguments of ``losses.chunked_token_stats`` that compute exactly ``needs``
    (derived statistics such as DIFFICULTY are not computed by the pass and are skipped)."""
    needs = set(needs)
    return {
        "teacher_entropy_temps": tuple(sorted(s.temperature for s in needs if s.kind == "teacher_entropy")),
        "student_entropy_temps": tuple(sorted(s.temperature for s in needs if s.kind == "student_entropy")),
        "hellinger": HELLINGER in needs,
    }


@dataclass
class StepStats:
    """The per-token inputs of the policies for one optimizer step (all micro-batches, flat [N])."""

    valid: Tensor  #: [N] bool: a loss token (not padding, not prompt)
    progress: float  #: s = step / total_steps in [0, 1]
    values: dict[Stat, Tensor] = field(default_factory=dict)  #: Stat -> [N] fp32

    def __getitem__(self, stat: Stat) -> Tensor:
        try:
            return self.values[stat]
        except KeyError:
            have = ", ".join(s.key for s in self.values) or "nothing"
            raise KeyError(f"statistic {stat.key!r} was not computed (this step has {have}): the policy that "
                           f"reads it must list it in `needs`") from None

    def __contains__(self, stat: Stat) -> bool:
        return stat in self.values
