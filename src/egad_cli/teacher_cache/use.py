"""Distilling from a teacher cache: open it, and refuse (before training) a run it cannot serve."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from egad_cli.errors import UserError
from egad_cli.teacher_cache.integrity import require_intact
from egad_cli.teacher_cache.manifest import (
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
    return CachedTeacher(root, manifest, SplitReader(root, manifest, "train"), val, tokenizer)


def fit_problems(cfg, manifest: dict, needs, student_layers: int) -> list[str]:
    """Why this distill config cannot train from this cache (empty: it can). needs: the policies' Stats."""
    from egad_cli.losses.feature import default_layer_map

    problems = []
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
             f"A top-k cache holds more ids ({rebuild_hint(manifest, kind='topk', k=48)}); the live teacher is "
             f"exact.")]


def check_fits(cfg, manifest: dict, root: Path, needs, student_layers: int) -> None:
    problems = fit_problems(cfg, manifest, needs, student_layers)
    if problems:
        lines = "\n  - ".join(problems)
        raise UserError(f"teacher_cache: {root} cannot serve this run:\n  - {lines}")
