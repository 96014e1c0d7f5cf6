"""Resolving a model reference: a local directory, or a hub id that may be unreachable."""

from __future__ import annotations

import json
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


def resolve_model_ref(ref: str, key: str, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """Return a loadable reference or raise a UserError naming `key` and how to fix it. A local model that
    ships its own code (``auto_map`` in its config) is refused unless the user opted in, before loading."""
    if looks_local(ref):
        path = Path(ref).expanduser()
        if path.is_file():
            hint = f" (a .gguf file: use {key.split('.')[0]}=gguf)" if path.suffix == ".gguf" else ""
            raise UserError(f"{key}: {str(path)!r} is a file; point {key} at the model's directory (with "
                            f"config.json and weights){hint}.")
        if not path.is_dir():
            raise UserError(f"{key}: directory {str(path)!r} does not exist. Point {key} at a directory with "
                            f"config.json and weights (a save_pretrained or huggingface-cli download output).")
        if not (path / "config.json").is_file():
            raise UserError(f"{key}: {str(path)!r} has no config.json; it is not a transformers model directory.")
        if not trust_remote_code and _ships_code(path):
            raise UserError(f"{key}: {str(path)!r} ships its own model code (auto_map in its config), which egad "
                            f"runs only if you ask: add {key.split('.')[0]}.trust_remote_code=true to the command "
                            f"line if you trust it.")
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


def _ships_code(path: Path) -> bool:
    """Whether a local model directory asks transformers to import code of its own."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            if "auto_map" in json.loads((path / name).read_text()):
                return True
        except (OSError, ValueError):
            continue
    return False
