"""Atomic checkpoints (write to a temporary directory, then rename) and finding the latest one."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from egad_cli.errors import UserError

STATE_FILE = "state.pt"


def save_checkpoint(ckpt_root: Path, step: int, state: dict, keep: int) -> Path:
    target = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / STATE_FILE)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)  # atomic on POSIX: a reader sees a whole checkpoint or none
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if re.fullmatch(r"step-\d+", p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resolve_resume(ref: str) -> Path:
    """trainer.resume may name a run dir (its latest checkpoint) or one checkpoint dir."""
    path = Path(ref).expanduser()
    if (path / STATE_FILE).is_file():
        return path
    ckpts = list_checkpoints(path / "checkpoints")
    if not ckpts:
        raise UserError(f"trainer.resume: {str(path)!r} is neither a checkpoint (step-N/) nor a run directory "
                        f"with checkpoints/step-N/{STATE_FILE}")
    return ckpts[-1]


def load_checkpoint(path: Path) -> dict:
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
