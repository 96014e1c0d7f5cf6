"""Set-up shared by the analysis commands (eval, inspect-entropy): cheap checks first, then models and data."""

from __future__ import annotations

from egad_cli.config import cache_dir
from egad_cli.config.schema import TrainerConfig
from egad_cli.data import Packed, build_splits, check_sources, pack_all
from egad_cli.engine.runtime import Runtime, resolve_runtime
from egad_cli.errors import UserError, check_writable
from egad_cli.models import (
    check_context,
    load_frozen_teacher,
    load_models,
    preflight_model_source,
    preflight_student_source,
)
from egad_cli.models.setup import apply_document_masks
from egad_cli.models.vocab import check_head_rows
from egad_cli.ui.console import console


def show_progress(enabled: bool) -> bool:
    """Progress bars only on a terminal: redirected to a file or a CI log they would be blank lines."""
    return enabled and console.is_terminal


def preflight(cfg) -> Runtime:
    """Device, model sources and data files, before anything expensive (cfg: an analysis command config)."""
    runtime = resolve_runtime(TrainerConfig(device=cfg.device, precision=cfg.precision), device_key="device",
                              measures=True)
    check_writable(cache_dir(cfg.cache_dir), "cache_dir")
    preflight_model_source(cfg.teacher)
    preflight_student_source(cfg.student)
    check_sources(cfg.dataset)
    return runtime


def load(cfg, runtime: Runtime, s_tok=None):
    """(teacher on the device, student on the device or None, shared tokenizer, shared vocabulary size).

    With a student this is exactly distill's ``load_models`` (same vocabulary checks). s_tok: a student with its
    own tokenizer (``models.setup.student_tokenizer_of``): the vocabulary size is then the teacher's."""
    if cfg.student is not None:
        teacher, student, tokenizer, vocab = load_models(cfg, runtime, s_tok=s_tok)
    else:
        teacher, tokenizer = load_frozen_teacher(cfg, runtime)
        apply_document_masks(cfg, tokenizer, teacher)
        check_head_rows(teacher, len(tokenizer), "teacher")
        student, vocab = None, len(tokenizer)
    check_context(cfg.dataset.block_size, "dataset.block_size", teacher=teacher, student=student)
    return teacher, student, tokenizer, vocab


def split_of(cfg, tokenizer, student_tokenizer=None) -> Packed:
    """The configured split (cfg.split: train | val | all) of cfg.dataset, packed (from the cache when possible).
    student_tokenizer: a student with its own tokenizer: blocks of both tokenisations, aligned."""
    if cfg.split == "all":
        if student_tokenizer is not None:
            raise UserError("split=all is not built for a student with its own tokenizer; use split=val (or "
                            "train) with dataset.val_fraction set so that your held-out files form the split")
        return pack_all(cfg.dataset, tokenizer)
    splits = build_splits(cfg.dataset, tokenizer, cache_dir(cfg.cache_dir), student_tokenizer=student_tokenizer)
    data = splits.val if cfg.split == "val" else splits.train
    if len(data) == 0:
        raise UserError(f"dataset={cfg.dataset.name}: the {cfg.split} split is empty; add text or lower "
                        f"dataset.block_size")
    return data
