"""The student's own tokenizer (``student.tokenizer``): trained offline on the training split, or read from disk.

``student.tokenizer=train`` trains a byte-level BPE (the ``tokenizers`` library, GPT-2's byte alphabet and
pre-tokenizer) of ``student.tokenizer_vocab_size`` tokens on the documents of the training split only (the
held-out split must stay unseen, or bits per byte on it would flatter the student). The result is cached under
``cache_dir/tokenizers/<key>/`` (key: the corpus settings and files, the vocabulary size, the trainer version), so
a sweep trains it once, and it is saved with the exported student like any tokenizer. No network is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from egad_cli.config.schema import DatasetConfig, StudentConfig
from egad_cli.errors import UserError

EOS = "<|endoftext|>"
TRAINER_VERSION = 1  #: bump when the training recipe changes: the cache key follows it


def tokenizer_key(data: DatasetConfig, vocab_size: int) -> str:
    from egad_cli.data.corpus import source_files

    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in source_files(data)]
    settings = {k: v for k, v in asdict(data).items() if k not in ("document_masks", "block_size")}
    blob = json.dumps([TRAINER_VERSION, vocab_size, settings, files], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def train_bpe(texts, vocab_size: int):
    """A byte-level BPE trained on ``texts`` (an iterable of str), EOS as its only special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def trained_tokenizer(data: DatasetConfig, vocab_size: int, cache_dir: Path, console=None):
    """The BPE of ``student.tokenizer=train`` for this corpus: from the cache, or trained and cached now."""
    from transformers import PreTrainedTokenizerFast

    from egad_cli.data.corpus import iter_documents, split_of

    target = Path(cache_dir).expanduser() / "tokenizers" / f"bpe{vocab_size}-{tokenizer_key(data, vocab_size)}"
    if (target / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(target))
    if console is not None:
        console.print(f"[dim]training the student's byte-level BPE ({vocab_size} tokens) on the training split "
                      f"(cached in {target})…[/]")
    budget = data.max_train_tokens * 8  # characters: a generous multiple of the token budget the run reads

    def texts():
        seen = 0
        for doc in iter_documents(data):
            if split_of(doc.key, data.val_fraction) != "train":
                continue
            for text in (doc.prompt, doc.text):
                if text:
                    yield text
                    seen += len(text)
            if seen >= budget:
                return

    tokenizer = train_bpe(texts(), vocab_size)
    if len(tokenizer) < 257:
        raise UserError(f"student.tokenizer=train: the training split gave no merges ({len(tokenizer)} tokens); "
                        f"the corpus is too small to train a tokenizer on: use more text or student.tokenizer=null")
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")  # own dir: ranks of a torchrun may train at once
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.replace(target)
    except OSError:
        if not (target / "tokenizer.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process put the same tokenizer in place first
    return tokenizer


def student_tokenizer(cfg: StudentConfig, data: DatasetConfig, cache_dir: Path, console=None):
    """The tokenizer student.tokenizer names (trained, or loaded from a local path), or None (the teacher's)."""
    if cfg.tokenizer is None:
        return None
    if cfg.tokenizer == "train":
        return trained_tokenizer(data, cfg.tokenizer_vocab_size, cache_dir, console)
    path = Path(cfg.tokenizer).expanduser()
    if not path.exists():
        raise UserError(f"student.tokenizer: {cfg.tokenizer!r} is neither `train` nor an existing tokenizer "
                        f"directory or tokenizer.json file")
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if path.is_file():
            return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOS)
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - a user's files: any failure to parse them is a message, not a traceback
        raise UserError(f"student.tokenizer: could not load a tokenizer from {str(path)!r} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:300]})") from None
