"""Distilling from a teacher cache: open it, and refuse (before training) a run it cannot serve."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import torch

from egad_cli.errors import UserError
from egad_cli.teacher_cache.integrity import require_intact
from egad_cli.teacher_cache.manifest import (
    HEAD,
    TOKENIZER_DIR,
    cache_kind,
    open_manifest,
    rebuild_hint,
    tau_support,
)
from egad_cli.teacher_cache.shards import SplitReader


@dataclass
class CachedTeacher:
    root: Path
    manifest: dict
    train: SplitReader
    val: SplitReader | None  #: None when the cache was built without the val split
    tokenizer: object
    head: torch.Tensor | None = None  #: kind=exact: the teacher's output head [V, D] (checked against the manifest)


def open_cached_teacher(ref: str) -> CachedTeacher:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # egad draws its own progress (as when it loads a live teacher)
    root, manifest = open_manifest(ref)
    require_intact(root, manifest)  # before any value of it is used, the tokenizer included
    try:  # plain JSON files written by save_pretrained; never remote code
        tokenizer = AutoTokenizer.from_pretrained(str(root / TOKENIZER_DIR), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - a damaged cache: any parse failure is a message
        raise UserError(f"teacher_cache: the tokenizer in {root / TOKENIZER_DIR} could not be read ({exc}); rebuild "
                        f"the cache: {manifest.get('command', 'egad cache …')}") from None
    val = SplitReader(root, manifest, "val") if "val" in manifest["splits"] else None
    cached = CachedTeacher(root, manifest, SplitReader(root, manifest, "train"), val, tokenizer)
    if cache_kind(manifest) == "exact":
        cached.head = load_head(root, manifest)
        for reader in (cached.train, cached.val):
            if reader is not None:
                reader.head = cached.head
    return cached


def load_head(root: Path, manifest: dict) -> torch.Tensor:
    """An exact cache's output head [V, D], refused unless it is the head of the cache's teacher: written for
    the teacher fingerprint the manifest records, of its shape (vocabulary × hidden size), and (checked before,
    by ``require_intact``) the bytes the manifest's digest vouches for."""
    from safetensors import safe_open

    path = root / manifest.get("head_file", HEAD)
    rebuild = manifest.get("command", "egad cache …")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            head = f.get_tensor("weight")
    except Exception as exc:  # noqa: BLE001 - a damaged or missing head: any read failure is a message
        raise UserError(f"teacher_cache: the output head {path} could not be read ({exc}); rebuild the cache: "
                        f"{rebuild}") from None
    want_shape = (int(manifest["vocab_size"]), int(manifest["teacher_facts"]["hidden_size"]))
    if meta.get("teacher_fingerprint") != manifest["teacher_fingerprint"] or tuple(head.shape) != want_shape:
        raise UserError(f"teacher_cache: the output head {path} is not the head of this cache's teacher (written "
                        f"for teacher {meta.get('teacher_fingerprint', '?')}, shape {list(head.shape)}; the cache's "
                        f"states are of teacher {manifest['teacher_fingerprint']}, shape {list(want_shape)}), so "
                        f"the distributions recomputed from them would be another model's. Rebuild the cache: "
                        f"rm -r {shlex.quote(str(root))} && {rebuild}")
    return head


def fit_problems(cfg, manifest: dict, needs, student_layers: int) -> list[str]:
    """Why this distill config cannot train from this cache (empty: it can). needs: the policies' Stats."""

    problems = []
    if cache_kind(manifest) == "exact":  # the whole distribution at any τ, every entropy: only the states matter
        return problems + state_problems(cfg, manifest, student_layers)
    lo, hi = cfg.temperature.tau_range()
    c_lo, c_hi = tau_support(manifest)
    if cfg.method.kd_weight > 0 and (lo < c_lo * (1 - 1e-6) or hi > c_hi * (1 + 1e-6)):
        grid = sorted({*manifest["exponents"], 1.0 / lo, 1.0 / hi})
        problems.append(f"temperature={cfg.temperature.name}: τ reaches [{lo:g}, {hi:g}], but the cache's tail sums "
                        f"cover τ in [{c_lo:g}, {c_hi:g}] only (exponents {manifest['exponents']}). Build a cache for "
                        f"it: {rebuild_hint(manifest, exponents=grid)}")
    wanted = {s.temperature for s in needs if s.kind == "teacher_entropy"}
    missing = sorted(wanted - {float(t) for t in manifest["entropy_temps"]})
    if missing:
        temps = sorted(wanted | {float(t) for t in manifest["entropy_temps"]})
        problems.append(f"the policies read the teacher's entropy at T={', '.join(f'{t:g}' for t in missing)}, which "
                        f"the cache does not hold (it has T={manifest['entropy_temps']}). Build a cache with it: "
                        f"{rebuild_hint(manifest, entropy_temps=temps)}")
    return problems + state_problems(cfg, manifest, student_layers)


def state_problems(cfg, manifest: dict, student_layers: int) -> list[str]:
    """The dual branch's teacher layers that the cache lacks."""
    from egad_cli.losses.feature import default_layer_map

    problems = []
    if cfg.branch.features:
        facts = manifest["teacher_facts"]
        layers = {lt for _, lt in default_layer_map(student_layers, int(facts["num_hidden_layers"]), cfg.branch.n_pairs)}
        absent = sorted(layers - {int(x) for x in manifest["layers"]})
        if absent:
            problems.append(f"branch={cfg.branch.name}: the dual branch reads the teacher's hidden states at layers "
                            f"{sorted(layers)}, and the cache lacks {absent} (it has {manifest['layers'] or 'none'}). "
                            f"Build a cache with them: "
                            f"{rebuild_hint(manifest, layers=sorted(layers | set(manifest['layers'])))}")
    return problems


def fit_warnings(cfg, manifest: dict) -> list[str]:
    """What this run can do from this cache, but less well than from the live teacher (printed, not refused)."""
    if cache_kind(manifest) != "sampled" or cfg.method.kd_weight == 0 or cfg.loss.TEACHER_WEIGHTED:
        return []
    return [(f"loss={cfg.loss.name} from a sampled teacher cache: its terms carry the student's mass on ids the "
             f"teacher rarely emits, which the teacher's draws cannot estimate stably (trained on the unbiased "
             f"estimate, rkl diverged), so this run compares the stored ids (head and draws) exactly and the rest "
             f"of the tail as one bucket, as a top-k cache does: stable, a lower bound (docs/teacher-cache.md). "
             f"An exact cache gives this loss as the live teacher does: {exact_hint(manifest)}")]

#: `egad cache` settings of the compact kinds that kind=exact refuses or ignores
COMPACT_KEYS = ("k", "draws", "draw_temperature", "exponents", "seed")


def exact_hint(manifest: dict) -> str:
    """The `egad cache` command that builds the exact cache of a compact cache's teacher and data."""
    return rebuild_hint(manifest, drop=COMPACT_KEYS, kind="exact")


def check_fits(cfg, manifest: dict, root: Path, needs, student_layers: int) -> None:
    problems = fit_problems(cfg, manifest, needs, student_layers)
    if problems:
        lines = "\n  - ".join(problems)
        raise UserError(f"teacher_cache: {root} cannot serve this run:\n  - {lines}")
