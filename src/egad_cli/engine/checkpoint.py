"""Checkpoints that never run code on load, survive crashes at any moment, and detect damage.

A checkpoint is a directory ``checkpoints/step-N/`` with

    tensors.safetensors   every tensor of the training state (models, optimizer, RNG, policies)
    state.json            everything else, with references to those tensors (``tree_codec``)
    manifest.json         format, step, and each file's size and SHA-256 — written last

Loading reads safetensors and JSON only: no pickle, so a checkpoint from someone else cannot
execute anything (a directory holding an old ``state.pt`` pickle is refused, never opened).

Writing is atomic: the files go to ``.step-N.tmp/``, are fsynced with their directory, and the
directory is renamed into place. Replacing an existing ``step-N`` first renames it to
``.step-N.old`` (still listed as step N until the new one is in place), so at every moment a
complete checkpoint of that step exists. A checkpoint whose manifest does not match its files
(a truncated write, a tampered file) is skipped with a warning naming it, in favour of the
previous one.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from egad_cli.engine.tree_codec import CodecError, decode, encode
from egad_cli.errors import UserError
from egad_cli.hashing import file_sha256

FORMAT = "egad-checkpoint/1"
MANIFEST = "manifest.json"
STATE_JSON = "state.json"
TENSORS = "tensors.safetensors"
LEGACY_PICKLE = "state.pt"
_STEP_DIR = re.compile(r"\.?step-(\d+)(\.old)?")


class CheckpointError(UserError):
    """A checkpoint that cannot be used: damaged, not egad's, or of an unsupported format."""


# ------------------------------------------------------------------------------------------ writing


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=64)
def _verified_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a checkpoint file as it is now. Keyed by size and mtime: a resume asks for the same
    checkpoint several times (the config entry, preflight, the loop, the load), and a multi-GB file
    should be hashed once; any write to the file changes its mtime and so the key."""
    return file_sha256(Path(path))


def save_checkpoint(ckpt_root: Path, step: int, state: dict, keep: int) -> Path:
    """Write `state` as checkpoint `step` atomically; keep the newest `keep` checkpoints."""
    target, tmp, old = ckpt_root / f"step-{step}", ckpt_root / f".step-{step}.tmp", ckpt_root / f".step-{step}.old"
    tree, tensors = encode(state)
    payload = json.dumps(tree)
    need = sum(t.numel() * t.element_size() for t in tensors.values()) + len(payload)
    writing = tmp
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_root.glob(".step-*.tmp"):  # left by a crash in an earlier write
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        writing = tmp / TENSORS
        save_file(tensors, str(writing), metadata={"format": FORMAT})
        writing = tmp / STATE_JSON
        writing.write_text(payload)
        files = {name: {"size": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
                 for name in (TENSORS, STATE_JSON)}
        writing = tmp / MANIFEST
        writing.write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1))
        for name in (TENSORS, STATE_JSON, MANIFEST):
            _fsync(tmp / name)
        _fsync(tmp)
        writing = target
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        _fsync(ckpt_root)
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            old.rename(target)  # put the previous checkpoint of this step back
        reason = getattr(exc, "strerror", None) or str(exc)
        raise CheckpointError(f"could not write checkpoint step {step}: {writing}: {reason}. It needs about "
                              f"{need / 2**20:.0f} MiB free on {ckpt_root}; nothing of it was kept (earlier "
                              f"checkpoints are untouched). Free some space or set trainer.keep_ckpts lower, "
                              f"then resume.") from None
    for stale_ckpt in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(stale_ckpt, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------------ finding


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Checkpoint dirs holding a manifest, oldest first. A ``.step-N.old`` (a replace that was cut
    off) stands in for a missing ``step-N``."""
    if not ckpt_root.is_dir():
        return []
    by_step: dict[int, Path] = {}
    for p in ckpt_root.iterdir():
        m = _STEP_DIR.fullmatch(p.name)
        if not m or not (p / MANIFEST).is_file() or (p.name.startswith(".") != bool(m.group(2))):
            continue
        step = int(m.group(1))
        if not m.group(2) or step not in by_step:
            by_step[step] = p
    return [by_step[s] for s in sorted(by_step)]


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a complete, untouched egad checkpoint (None when it is)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        if (path / LEGACY_PICKLE).is_file():
            return (f"it holds {LEGACY_PICKLE}, a pickle from an earlier egad version; egad does not load "
                    f"pickles (loading one can run arbitrary code). Start a new run")
        return f"it has no {MANIFEST}: not an egad checkpoint, or its write never finished"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT:
            return f"format {manifest.get('format')!r}; this egad reads {FORMAT!r}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    if set(files) != {TENSORS, STATE_JSON}:
        return f"its {MANIFEST} lists {sorted(files)}, not an egad checkpoint's files"
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != want.get("size"):
            return f"{name} has {f.stat().st_size} bytes, the manifest says {want.get('size')} (truncated?)"
        stat = f.stat()
        if _verified_sha256(str(f.resolve()), stat.st_size, stat.st_mtime_ns) != want.get("sha256"):
            return f"{name} does not match its SHA-256 in the manifest (damaged or altered)"
    return None


def resolve_resume(ref: str, warn: Callable[[str], None] | None = None) -> Path:
    """trainer.resume names a run dir (its newest intact checkpoint) or one checkpoint dir (used as is).

    In a run dir a damaged newest checkpoint is skipped, with a warning naming it, for the one before."""
    path = Path(ref).expanduser()
    if _STEP_DIR.fullmatch(path.name) or (path / MANIFEST).exists() or (path / LEGACY_PICKLE).exists():
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"trainer.resume: checkpoint {path} cannot be used: {problem}.")
        return path
    candidates = list_checkpoints(path / "checkpoints")
    if not candidates:
        legacy = sorted((path / "checkpoints").glob(f"step-*/{LEGACY_PICKLE}"))
        if legacy:
            raise CheckpointError(f"trainer.resume: {legacy[-1].parent} cannot be used: "
                                  f"{checkpoint_problem(legacy[-1].parent)}.")
        raise CheckpointError(f"trainer.resume: {str(path)!r} is neither a checkpoint (step-N/) nor a run "
                              f"directory with checkpoints/step-N/{MANIFEST}")
    for ckpt in reversed(candidates):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        if warn is not None:
            warn(f"skipping checkpoint {ckpt}: {problem}")
    raise CheckpointError(f"trainer.resume: no intact checkpoint under {path / 'checkpoints'} "
                          f"(every one failed its manifest check); start a new run")


# ------------------------------------------------------------------------------------------ loading


def load_checkpoint(path: Path) -> dict:
    """The state tree of a verified checkpoint (safetensors + JSON: nothing is executed)."""
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} cannot be used: {problem}.")
    try:
        tensors = load_file(str(path / TENSORS))
        return decode(json.loads((path / STATE_JSON).read_text()), tensors)
    except (SafetensorError, CodecError, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be used: {exc}.") from None


# ------------------------------------------------------------------------------------------ layout


def sequences_per_step(path: Path) -> int | None:
    """How many sequences a step of the run that wrote this (verified) checkpoint read: batch_size ×
    grad_accum × ranks. None for a checkpoint of an egad that did not record it. Reads state.json only."""
    try:
        value = json.loads((path / STATE_JSON).read_text()).get("sequences_per_step")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be used: {STATE_JSON}: {exc}.") from None
    return int(value) if isinstance(value, int) else None


def global_batch_problem(path: Path, saved: int, now: int) -> str | None:
    """Why a run of `now` sequences a step cannot continue a checkpoint written with `saved` (None: it can)."""
    if saved == now:
        return None
    return (f"trainer.resume: checkpoint {path} was written with {saved} sequences per step (trainer.batch_size × "
            f"trainer.grad_accum × ranks) and this run has {now}; set trainer.batch_size or trainer.grad_accum so "
            f"that the product over the ranks is {saved}")
