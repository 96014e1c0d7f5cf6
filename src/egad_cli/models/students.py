"""Student presets: a fresh Llama sized from the teacher's vocabulary, a layer subset of the teacher, or any HF model."""

from __future__ import annotations

import copy
import re

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from egad_cli.config.schema import StudentConfig
from egad_cli.errors import UserError
from egad_cli.models.hub import resolve_model_ref
from egad_cli.models.loading import load_error, random_llama


def evenly_spaced(n_keep: int, n_total: int) -> list[int]:
    """n_keep indices in [0, n_total), first and last included, evenly spaced."""
    if n_keep == 1:
        return [n_total - 1]
    return sorted({round(i * (n_total - 1) / (n_keep - 1)) for i in range(n_keep)})


def layer_subset(teacher, n_layers: int):
    """Copy of the teacher with only `n_layers` evenly spaced decoder layers (embeddings, norm, head kept)."""
    total = teacher.config.num_hidden_layers
    if n_layers > total:
        raise UserError(f"student.num_layers: {n_layers} is more than the teacher's {total} layers")
    keep = evenly_spaced(n_layers, total)
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(config)
    renumber = {old: new for new, old in enumerate(keep)}
    state = {}
    for key, value in teacher.state_dict().items():
        match = re.search(r"\.layers\.(\d+)\.", key)
        if match is None:
            state[key] = value
        elif int(match.group(1)) in renumber:
            state[key.replace(match.group(0), f".layers.{renumber[int(match.group(1))]}.")] = value
    student.load_state_dict(state, strict=True)
    return student


def build_student(cfg: StudentConfig, teacher, t_tok, default_seed: int = 0, vocab_rows: int | None = None,
                  s_tok=None):
    """Return (student in fp32 master weights, its tokenizer). default_seed: used when student.seed is null.
    teacher may be None (a teacher cache) when vocab_rows, the teacher's lm_head rows, is given.
    s_tok: the student's own tokenizer (student.tokenizer, ``models.student_tokenizer``): a scratch student is
    built for its vocabulary instead of the teacher's."""
    if cfg.init == "from_teacher" and teacher is None:
        raise UserError("student.init=from_teacher copies the teacher's layers, which a teacher cache does not "
                        "hold; use student=tiny/small/hf with teacher_cache=…, or drop teacher_cache")
    if cfg.init == "scratch" and s_tok is not None:
        seed = cfg.seed if cfg.seed is not None else default_seed
        return random_llama(cfg.arch, len(s_tok), s_tok, seed).float(), s_tok
    if cfg.init == "scratch":
        rows = vocab_rows if vocab_rows is not None else teacher.get_output_embeddings().weight.shape[0]
        seed = cfg.seed if cfg.seed is not None else default_seed
        return random_llama(cfg.arch, rows, t_tok, seed).float(), t_tok
    if cfg.init == "from_teacher":
        return layer_subset(teacher, cfg.num_layers).float(), t_tok
    ref = resolve_model_ref(cfg.path, "student.path", cfg.revision, cfg.trust_remote_code)
    try:
        s_tok = AutoTokenizer.from_pretrained(ref, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        student = AutoModelForCausalLM.from_pretrained(ref, revision=cfg.revision, dtype=torch.float32,
                                                       trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - a user's files: any failure to parse them is a message, not a traceback
        raise load_error("student.path", ref, exc) from None
    return student, s_tok


def student_layer_count(student: StudentConfig) -> int:
    """Decoder layers of the student a config describes, without building it (an HF one: its config.json)."""
    if student.init == "scratch":
        return student.arch.num_layers
    if student.init == "from_teacher":
        return student.num_layers
    from transformers import AutoConfig

    ref = resolve_model_ref(student.path, "student.path", student.revision, student.trust_remote_code)
    return AutoConfig.from_pretrained(ref, revision=student.revision,
                                      trust_remote_code=student.trust_remote_code).num_hidden_layers
