"""egad cache: run the teacher once over a dataset and store what every distillation method reads.

This module composes and validates the config only (no torch); the work is in ``cache_job``.
"""

from __future__ import annotations

import shlex

import hydra
from omegaconf import DictConfig

from egad_cli.commands.common import run_task
from egad_cli.commands.runs import task_overrides
from egad_cli.config import conf_dir, register_schemas, validate
from egad_cli.config.commands import CacheCommandConfig

register_schemas()


def run_cache(raw: DictConfig) -> str:
    # The command that builds this cache, kept in its plan/manifest: hints name it verbatim.
    raw.command = " ".join(["egad cache", *(shlex.quote(o) for o in task_overrides())])
    cfg: CacheCommandConfig = validate(raw, CacheCommandConfig)
    from egad_cli.commands.cache_job import run

    return str(run(cfg))


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="cache")
def main(cfg: DictConfig) -> str:
    return run_task(run_cache, cfg)
