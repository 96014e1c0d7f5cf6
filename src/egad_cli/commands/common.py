"""What every subcommand shares: clean user-error reporting."""

from __future__ import annotations

import sys
from collections.abc import Callable

from egad_cli.errors import Interrupted, UserError
from egad_cli.ui.console import err_console


def run_task(fn: Callable, *args):
    """Run a subcommand body; a UserError becomes one clear message and exit status 2."""
    try:
        return fn(*args)
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)  # no line breaks inside paths
        sys.exit(2)
    except Interrupted as exc:
        err_console.print(f"[yellow]{exc}[/]", soft_wrap=True)
        sys.exit(130)
