"""Errors meant for the user: printed as one clear message, without a traceback."""

import os
from pathlib import Path


class UserError(Exception):
    """Bad input the user can fix; the message names the key or file and how to fix it."""


class Interrupted(Exception):
    """Ctrl-C during training: a checkpoint was written; the message says how to resume."""


def check_writable(path: Path, key: str) -> None:
    """Create `path` if needed and prove it takes a file, or raise a UserError naming `key`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".egad-write-test-{os.getpid()}"  # per process: DDP ranks check the same dir at once
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{key}: cannot write to {path} ({exc.strerror or exc}); point {key} at a writable "
                        f"directory") from None
