"""egad eval: a student against its teacher on held-out data.

    egad eval run_dir=outputs/2025-01-01/12-00-00_egad        # a distill run: its teacher, data, student/
    egad eval student.path=/models/my-student teacher=hf teacher.path=/models/teacher
    egad eval -m run_dir=multirun/…/0_method:kd,multirun/…/1_method:egad
    egad eval run_dir=… teacher_cache=<exact cache>   # the teacher read from the cache's states: no teacher pass

Metrics over the held-out tokens (see ``egad_cli.evaluation.metrics`` for the definitions):
perplexity of student and teacher, forward and reverse KL, top-1 agreement, expected
calibration error (15 equal-width confidence bins), each also per teacher-entropy decile; then
greedy generations side by side. Writes eval.json to run_dir (or out_dir, or the output dir).
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

from egad_cli.commands.common import run_task
from egad_cli.commands.runs import (
    check_run_dir,
    check_run_fits_cache,
    sets_group,
    task_overrides,
    with_run_dir,
    with_teacher_cache,
)
from egad_cli.config import conf_dir, register_schemas, validate
from egad_cli.config.commands import EvalCommandConfig

register_schemas()

RUN_GROUPS = ("teacher", "dataset", "onpolicy")  # onpolicy: the run's sampling settings for the on-policy metric


def run_eval(raw: DictConfig) -> float:
    """Compose from run_dir when given, validate, then hand over to the job (which imports torch)."""
    started = time.perf_counter()
    run_dir = None
    if raw.run_dir is not None:
        overrides = task_overrides()
        run_dir = check_run_dir(raw.run_dir, need_student=not sets_group(overrides, "student"))
        raw = with_run_dir(raw, run_dir, RUN_GROUPS, overrides)
    if raw.teacher_cache:  # the teacher and dataset are the cache's (a run's must agree)
        if run_dir is not None:
            check_run_fits_cache(raw, run_dir)
        raw = with_teacher_cache(raw, task_overrides())
    cfg: EvalCommandConfig = validate(raw, EvalCommandConfig)
    from egad_cli.commands.evaluate_job import run

    return run(cfg, run_dir, started)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="eval")
def main(cfg: DictConfig) -> float:
    return run_task(run_eval, cfg)
