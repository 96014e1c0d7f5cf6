"""egad inspect-entropy: one teacher pass; the teacher's token-entropy distribution in the terminal.

    egad inspect-entropy                                  # embedded teacher and corpus, 4,096 tokens
    egad inspect-entropy max_tokens=32768 log_scale=true save=true
    egad inspect-entropy method=egad branch.q=0.2 curriculum=cosine curriculum.mode=hard
    egad inspect-entropy student=hf student.path=/models/student     # + student entropy and the gap

Token i's entropy is H_i = −Σ_v p_i(v) log p_i(v) (nats, T = 1, fp32) of the teacher's prediction
of token i from the tokens before it, exactly what distill's policies see.
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

from egad_cli.commands.common import run_task
from egad_cli.commands.runs import (
    check_run_dir,
    has_student,
    task_overrides,
    with_run_dir,
    with_teacher_cache,
)
from egad_cli.config import conf_dir, register_schemas, validate
from egad_cli.config.commands import InspectEntropyConfig

register_schemas()

RUN_GROUPS = ("teacher", "dataset", "method", "loss", "difficulty", "curriculum", "temperature", "weighting",
              "branch")


def run_inspect(raw: DictConfig) -> float:
    """Compose from run_dir when given, validate, then hand over to the job (which imports torch)."""
    started = time.perf_counter()
    note = None
    if raw.run_dir is not None:
        run_dir = check_run_dir(raw.run_dir, need_student=False)
        raw = with_run_dir(raw, run_dir, RUN_GROUPS, task_overrides())
        if not has_student(run_dir):
            note = f"{run_dir} has no exported student; showing the teacher only"
    if raw.teacher_cache:
        raw = with_teacher_cache(raw, task_overrides())
        if raw.student is not None:
            note = "teacher_cache: the entropies come from the cache; the student is left out (its entropy needs a " \
                   "model pass: drop teacher_cache to see it)"
            raw.student = None
    cfg: InspectEntropyConfig = validate(raw, InspectEntropyConfig)
    from egad_cli.commands.inspect_job import run

    return run(cfg, started, note)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="inspect_entropy")
def main(cfg: DictConfig) -> float:
    return run_task(run_inspect, cfg)
