"""Resolving a model reference: a local directory, or a hub id that may be unreachable."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from egad_cli.errors import UserError


def looks_local(ref: str) -> bool:
    """A path the user meant as a file system location (not a hub id like org/name)."""
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists() or ref.count("/") > 1


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """One quick TCP connect to the hub endpoint, so offline users wait seconds, not minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False, "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True, ""
    except OSError as exc:
        return False, f"cannot reach {host}: {exc}"


def is_cached(ref: str, revision: str | None) -> bool:
    """Whether the hub id's config is already in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(ref, "config.json", revision=revision)
    return isinstance(hit, str)


def resolve_model_ref(ref: str, key: str, revision: str | None = None) -> str:
    """Return a loadable reference or raise a UserError naming `key` and how to fix it."""
    if looks_local(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise UserError(f"{key}: directory {str(path)!r} does not exist. Point {key} at a directory with "
                            f"config.json and weights (a save_pretrained or huggingface-cli download output).")
        if not (path / "config.json").is_file():
            raise UserError(f"{key}: {str(path)!r} has no config.json; it is not a transformers model directory.")
        return str(path)
    if is_cached(ref, revision):
        return ref
    ok, why = hub_reachable()
    if not ok:
        raise UserError(
            f"{key}: {ref!r} is a hub id, it is not in the local cache, and the hub is unreachable ({why}).\n"
            f"  On a machine with access:  huggingface-cli download {ref} --local-dir /some/dir\n"
            f"  then run with {key}=/some/dir  (any local transformers model directory works).")
    return ref
