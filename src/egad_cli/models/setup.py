"""The models of a command, ready to use: the frozen teacher on its device, the student, the shared vocabulary."""

from __future__ import annotations

import torch
from transformers.utils import logging as hf_logging

from egad_cli.config import cache_dir
from egad_cli.engine.runtime import Runtime
from egad_cli.errors import UserError
from egad_cli.models import documents
from egad_cli.models.loading import load_teacher
from egad_cli.models.students import build_student
from egad_cli.models.vocab import check_head_rows, check_shared_vocab, same_vocabulary
from egad_cli.ui.console import console


def load_frozen_teacher(cfg, runtime: Runtime):
    """(teacher frozen on the device in teacher.dtype, or the training dtype for auto; its tokenizer).
    cfg: a command config with ``teacher`` and ``cache_dir``."""
    hf_logging.disable_progress_bar()  # egad draws its own progress; transformers' tqdm bars only add noise
    dtype = runtime.teacher_dtype if cfg.teacher.dtype == "auto" else getattr(torch, cfg.teacher.dtype)
    teacher, t_tok = load_teacher(cfg.teacher, cache_dir(cfg.cache_dir), dtype, console)
    return teacher.to(runtime.device).requires_grad_(False), t_tok


def load_models(cfg, runtime: Runtime, seed: int = 0, s_tok=None):
    """(teacher frozen on the device, student, shared tokenizer, shared vocabulary size).
    seed: the init seed of a scratch student whose student.seed is null (distill: trainer.seed).
    s_tok: a cross-tokenizer run's student tokenizer (``student_tokenizer_of``): the student is built for it,
    and the vocabulary size returned is the teacher's."""
    teacher, t_tok = load_frozen_teacher(cfg, runtime)
    student, own_tok = build_student(cfg.student, teacher, t_tok, default_seed=seed, s_tok=s_tok)
    if s_tok is None:
        vocab = check_shared_vocab(teacher, student, t_tok, own_tok)
        apply_document_masks(cfg, t_tok, teacher, student)
    else:
        vocab = len(t_tok)
        check_head_rows(teacher, vocab, "teacher")
        check_head_rows(student, len(s_tok), "student")
        apply_document_masks(cfg, t_tok, teacher)
        apply_document_masks(cfg, s_tok, student)
    return teacher, student.to(runtime.device), t_tok, vocab


def load_student_for_cache(cfg, cached, runtime: Runtime, seed: int = 0):
    """(student on the device, its tokenizer, shared vocabulary size) for a command that reads its teacher from a cache
    (``teacher_cache.use.CachedTeacher``): ``load_models`` without the teacher, whose head rows and tokenizer the
    cache records. seed: as in ``load_models``."""
    manifest = cached.manifest
    student, s_tok = build_student(cfg.student, None, cached.tokenizer, default_seed=seed,
                                   vocab_rows=int(manifest["teacher_facts"]["vocab_rows"]))
    vocab = check_shared_vocab(None, student, cached.tokenizer, s_tok)
    apply_document_masks(cfg, cached.tokenizer, student)
    if vocab != int(manifest["vocab_size"]):
        raise UserError(f"teacher_cache: its tokenizer has {vocab} tokens but the cache was written for "
                        f"{manifest['vocab_size']}; the cache is damaged: rebuild it "
                        f"({manifest.get('command', 'egad cache …')})")
    student = student.to(runtime.device)
    check_context(int(manifest["block_size"]), "dataset.block_size", student=student)
    return student, s_tok, vocab


def apply_document_masks(cfg, tokenizer, *models) -> None:
    """dataset.document_masks=true: every pass of these models masks attention across documents."""
    if cfg.dataset.document_masks:
        for model in models:
            documents.enable(model, tokenizer.eos_token_id)


def check_context(length: int, key: str, **models) -> None:
    """A sequence of `length` tokens (set by `key`) must fit each model's positions: a longer one fails
    inside attention, or silently extrapolates rotary positions the model never saw."""
    for who, model in models.items():
        limit = getattr(model.config, "max_position_embeddings", None) if model is not None else None
        if limit is not None and length > limit:
            raise UserError(f"{key}: sequences of {length} tokens are longer than the {who}'s "
                            f"max_position_embeddings={limit}; lower {key}")


def student_tokenizer_of(cfg, t_tok, console=None):
    """The student's tokenizer when it differs from the teacher's (a cross-tokenizer run), else None: the one
    student.tokenizer names, or the one a pretrained student (student=hf) ships. Read before any weights load."""
    from egad_cli.models.student_tokenizer import student_tokenizer

    s_tok = student_tokenizer(cfg.student, cfg.dataset, cache_dir(cfg.cache_dir), console)
    if s_tok is None and cfg.student.init == "hf":
        from transformers import AutoTokenizer

        from egad_cli.models.hub import resolve_model_ref
        from egad_cli.models.loading import load_error

        ref = resolve_model_ref(cfg.student.path, "student.path", cfg.student.revision, cfg.student.trust_remote_code)
        try:
            s_tok = AutoTokenizer.from_pretrained(ref, revision=cfg.student.revision,
                                                  trust_remote_code=cfg.student.trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - a user's files: any failure to parse them is a message
            raise load_error("student.path", ref, exc) from None
    if s_tok is None or same_vocabulary(t_tok, s_tok):
        return None
    if s_tok.eos_token_id is None:
        raise UserError("student.tokenizer: the student's tokenizer has no EOS token, which marks the end of each "
                        "document; set one in its tokenizer_config.json (eos_token)")
    return s_tok
