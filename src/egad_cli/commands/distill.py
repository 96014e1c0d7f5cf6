"""egad distill: train a student from a teacher with EGAD or a baseline, then export it.

This module composes and validates the config only (no torch, no transformers: a typo answers in
about a second); the work is in ``distill_job``.
"""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig, OmegaConf

from egad_cli.commands.common import run_task
from egad_cli.commands.runs import RUN_CONFIG, overridden, task_overrides, with_run_dir, with_teacher_cache
from egad_cli.config import conf_dir, register_schemas, validate
from egad_cli.config.schema import DISTRIBUTED, launch_problem
from egad_cli.errors import UserError

register_schemas()


#: what a resumed run takes from its saved config.yaml
RESUME_GROUPS = ("teacher", "student", "dataset", "method", "loss", "difficulty", "curriculum", "temperature",
                 "weighting", "branch", "trainer", "eval", "logging")
#: keys a resume command may change: the budget, cadences, where and on how many ranks it runs (check_layout:
#: batch_size × grad_accum × ranks must be unchanged), what it prints
RESUME_MAY_CHANGE = ("trainer.max_steps", "trainer.max_tokens", "trainer.log_every", "trainer.ckpt_every",
                     "trainer.keep_ckpts", "trainer.resume", "trainer.device", "trainer.export", "trainer.strategy",
                     "trainer.batch_size", "trainer.grad_accum", "trainer.compile", "trainer.threads",
                     "trainer.activation_checkpointing", "eval.", "logging.", "teacher.trust_remote_code",
                     "student.trust_remote_code")


def resumed_config(raw: DictConfig, overrides: list[str]) -> DictConfig:
    """trainer.resume: the run's own saved config, with the command line's safe changes on top.

    So the resume command egad prints works verbatim for a run started with any overrides, and a change
    that would break the run (another method, model, dataset, block size …) is refused by name."""
    from egad_cli.engine.checkpoint import resolve_resume  # here, not at the top: that module imports torch

    ckpt = resolve_resume(raw.trainer.resume)
    run = ckpt.parent.parent
    if not (run / RUN_CONFIG).is_file():  # a bare checkpoint dir: the command line must describe the run
        return raw
    merged = with_run_dir(raw, run, RESUME_GROUPS, overrides, student=False)
    saved = OmegaConf.load(run / RUN_CONFIG)
    chosen, keys = overridden(overrides)
    changed = []
    for key in sorted(keys | {g for g in chosen if g in RESUME_GROUPS}):
        if key.startswith(RESUME_MAY_CHANGE) or key.split(".")[0] not in RESUME_GROUPS:
            continue
        before, after = OmegaConf.select(saved, key), OmegaConf.select(merged, key)
        if isinstance(before, DictConfig) or isinstance(after, DictConfig):  # a group choice: compare the nodes
            before, after = OmegaConf.to_container(before), OmegaConf.to_container(after)
        if before != after:
            changed.append(key)
    saved_cache = OmegaConf.select(saved, "teacher_cache", default=None)
    if "teacher_cache" in chosen and (merged.teacher_cache or None) != saved_cache:
        changed.append("teacher_cache")
    merged.teacher_cache = saved_cache  # a run trained from a cache resumes from it, never from the live teacher
    check_layout(ckpt, saved, merged)
    if changed:
        raise UserError(f"trainer.resume: {', '.join(changed)} differ(s) from the run being resumed ({run / RUN_CONFIG}); "
                        f"a resumed run keeps its models, data, method and optimisation settings. Drop "
                        f"{'it' if len(changed) == 1 else 'them'} from the command line, or start a new run. A resume "
                        f"may change: {', '.join(k.rstrip('.') for k in RESUME_MAY_CHANGE)}.")
    return merged


#: what decides which sequences a step reads, with the number of ranks
LAYOUT_KEYS = ("trainer.batch_size", "trainer.grad_accum", "trainer.strategy")


def check_layout(ckpt, saved: DictConfig, merged: DictConfig) -> None:
    """A resume may change the ranks, batch size and accumulation only if a step still reads as many
    sequences (the same ones): checked here, before anything is loaded or written."""
    from egad_cli.engine.checkpoint import global_batch_problem, sequences_per_step

    t = merged.trainer
    ranks = int(os.environ.get("WORLD_SIZE", "1")) if t.strategy in DISTRIBUTED else 1
    recorded = sequences_per_step(ckpt)
    if recorded is not None:
        problem = global_batch_problem(ckpt, recorded, t.batch_size * t.grad_accum * ranks)
        if problem:
            raise UserError(problem)
        return
    # an earlier egad did not record it (nor its number of ranks): the layout must be the saved config's
    differ = [k for k in LAYOUT_KEYS if OmegaConf.select(saved, k) != OmegaConf.select(merged, k)]
    if differ:
        raise UserError(f"trainer.resume: {ckpt} was written by an earlier egad, which did not record how many "
                        f"sequences a step read; resume it with the run's own {', '.join(differ)}")


def preflight_launch(strategy: str, device: str, device_key: str = "trainer.device") -> None:
    """How the process was launched (torchrun or not) and the device asked for, checked before the models'
    imports (seconds): what needs no model is refused as fast as a config error."""
    problem = launch_problem(strategy, device_key)
    if problem:
        raise UserError(problem)
    if device.startswith("cuda"):  # the check imports torch: only when CUDA is asked for
        from egad_cli.engine.runtime import check_device_available

        check_device_available(device, device_key)


def run_distill(raw: DictConfig) -> float:
    if raw.trainer.resume:
        raw = resumed_config(raw, task_overrides())
    if raw.teacher_cache:
        raw = with_teacher_cache(raw, task_overrides())
    cfg = validate(raw)
    preflight_launch(cfg.trainer.strategy, cfg.trainer.device)
    from egad_cli.commands.distill_job import run  # the heavy imports, once the config and launch are good

    return run(cfg, raw)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="distill")
def main(cfg: DictConfig) -> float:
    """Returns the held-out KL after training: what a Hydra sweeper (optuna) minimises. None when the job
    failed or had nothing to measure it on, which the optuna sweeper records as a failed trial."""
    return run_task(run_distill, cfg)
