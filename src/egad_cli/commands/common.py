"""What every subcommand shares: clean user-error reporting."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.experimental.callback import Callback

from egad_cli.commands.sweep import JOB_ERROR
from egad_cli.errors import Interrupted, UserError
from egad_cli.ui.console import err_console

_started = False
_failed_jobs: list[str] = []  #: multirun jobs that ended in a user error, as "job dir: message"


def reset_task_started() -> None:
    global _started
    _started = False
    _failed_jobs.clear()
    _failed_dirs.clear()


def failed_jobs() -> list[str]:
    return list(_failed_jobs)


def _multirun_job_dir() -> str | None:
    """This job's output dir when Hydra runs a sweep (-m), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get().runtime.output_dir


_failed_dirs: set[Path] = set()


def _record_failure(job_dir: str, message: str) -> None:
    where = Path(job_dir).resolve()  # one entry a job, however its dir was spelled (relative or absolute)
    if where not in _failed_dirs:
        _failed_dirs.add(where)
        _failed_jobs.append(f"{job_dir}: {' '.join(message.split())}")


class SweepFailures(Callback):
    """A Hydra callback (every command's config registers it): at the end of a sweep, the jobs that
    ended in a user error, read from the ``error.txt`` each left in its job dir. Launchers that run jobs
    in other processes (joblib, submitit) report them this way too; egad then exits 2 and lists them."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        for error in sorted(sweep_dir.glob(f"**/{JOB_ERROR}")):
            try:
                _record_failure(str(error.parent), error.read_text())
            except OSError:
                _record_failure(str(error.parent), "(its error.txt is unreadable)")


def task_started() -> bool:
    """Whether a subcommand body began since the last reset: an exit before it is one of Hydra's own
    usage errors."""
    return _started


def run_task(fn: Callable, *args):
    """Run a subcommand body; a UserError becomes one clear message and exit status 2."""
    global _started
    _started = True
    try:
        return fn(*args)
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)  # no line breaks inside paths
        job_dir = _multirun_job_dir()
        if job_dir is None:
            sys.exit(2)
        # One bad point of a sweep must not cost the others: record it in its job dir (egad report lists
        # the job as failed) and let Hydra go on; egad exits 2 after the sweep.
        Path(job_dir, JOB_ERROR).write_text(f"{exc}\n")
        _record_failure(job_dir, str(exc))
        return None
    except Interrupted as exc:
        err_console.print(f"[yellow]{exc}[/]", soft_wrap=True)
        sys.exit(130)
    except KeyboardInterrupt:  # while loading or measuring, before training started: nothing to resume
        err_console.print("[yellow]interrupted before training started; nothing was trained, nothing to resume[/]")
        sys.exit(130)


def json_safe(value):
    """JSON-safe: non-finite floats become null (json.dumps would write NaN, which is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
