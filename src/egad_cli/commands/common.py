"""What every subcommand shares: clean user-error reporting."""

from __future__ import annotations

import sys
from collections.abc import Callable

from egad_cli.errors import Interrupted, UserError
from egad_cli.ui.console import err_console

_started = False


def reset_task_started() -> None:
    global _started
    _started = False


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
        sys.exit(2)
    except Interrupted as exc:
        err_console.print(f"[yellow]{exc}[/]", soft_wrap=True)
        sys.exit(130)
    except KeyboardInterrupt:  # while loading or measuring, before training started: nothing to resume
        err_console.print("[yellow]interrupted before training started; nothing was trained, nothing to resume[/]")
        sys.exit(130)
