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
#: conventional end-of-text tokens, most preferred first (see ``file_eos``): the end of a document before the end
#: of a chat turn, since the student learns from packed documents
EOS_NAMES = (
    "<|endoftext|>",  # GPT-2, Qwen, Phi, StarCoder
    "</s>",  # Llama 2, Mistral, T5, SentencePiece conversions
    "<eos>",  # Gemma
    "<|end_of_text|>",  # Llama 3
    "<\uff5cend\u2581of\u2581sentence\uff5c>",  # DeepSeek
    "<|eos|>",
    "[EOS]",
    "<EOS>",
    "<|eot_id|>",  # Llama 3 chat: end of a turn
    "<|im_end|>",  # ChatML
    "<|end|>",  # Phi-3
    "<end_of_turn>",  # Gemma chat
)
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


def _template_tokens(processor: dict | None) -> tuple[list[str], list[str]]:
    """The tokens a tokenizer.json post-processor inserts, and those it appends after a single sequence."""
    if not isinstance(processor, dict):
        return [], []
    kind = processor.get("type")
    if kind == "Sequence":
        inserted, appended = [], []
        for inner in processor.get("processors") or []:
            i, a = _template_tokens(inner)
            inserted += i
            appended += a
        return inserted, appended
    if kind in ("RobertaProcessing", "BertProcessing"):  # "<s> $A </s>", "[CLS] $A [SEP]"
        pairs = [processor.get(k) for k in ("cls", "sep")]
        inserted = [p[0] for p in pairs if isinstance(p, list) and p and isinstance(p[0], str)]
        sep = processor.get("sep")
        return inserted, [sep[0]] if isinstance(sep, list) and sep and isinstance(sep[0], str) else []
    if kind == "TemplateProcessing":
        specials = processor.get("special_tokens") or {}
        inserted = [t for v in specials.values() if isinstance(v, dict) for t in v.get("tokens") or []]
        single = processor.get("single") or []
        seen_sequence, appended = False, []
        for piece in single:
            if isinstance(piece, dict) and "Sequence" in piece:
                seen_sequence = True
            elif seen_sequence and isinstance(piece, dict) and "SpecialToken" in piece:
                entry = specials.get(piece["SpecialToken"].get("id"), {})
                appended += [t for t in entry.get("tokens") or [] if isinstance(t, str)]
        return inserted, appended
    return [], []


def file_eos(data: dict) -> tuple[str | None, list[str]]:
    """The end-of-text token of a parsed tokenizer.json, or None; and the file's special tokens.

    A bare tokenizer.json has no tokenizer_config.json to name its EOS, so it is inferred from the file:

    1. its special tokens (the added tokens marked ``special``, and the tokens its post-processor inserts)
       that are conventional end-of-text names: the first of them in ``EOS_NAMES`` order wins (``<|endoftext|>``,
       ``</s>``, ``<eos>``, ``<|end_of_text|>``, DeepSeek's end of sentence, ``<|eos|>``, ``[EOS]``, ``<EOS>``, then
       the ends of a chat turn ``<|eot_id|>``, ``<|im_end|>``, ``<|end|>``, ``<end_of_turn>``), so Qwen's file
       (``<|endoftext|>`` and ``<|im_end|>``) gives ``<|endoftext|>``, Llama 3's gives ``<|end_of_text|>``;
    2. otherwise the last special token its post-processor appends after a sequence (``$A [STOP]``, Roberta's
       and Bert's separator): the file's own end marker under another name;
    3. otherwise None: the file has no end-of-text token.
    """
    specials = [t["content"] for t in data.get("added_tokens") or []
                if isinstance(t, dict) and t.get("special") and isinstance(t.get("content"), str)]
    inserted, appended = _template_tokens(data.get("post_processor"))
    specials += [t for t in inserted if t not in specials]
    eos = next((name for name in EOS_NAMES if name in specials), None)
    if eos is None and appended:
        eos = appended[-1]
    return eos, specials


def tokenizer_file(path: Path, console=None):
    """A bare tokenizer.json as a fast tokenizer, with the end-of-text token ``file_eos`` finds in it; a file with
    none gets ``<|endoftext|>`` added (one more token), which is said on the console (or warned, without one)."""
    from transformers import PreTrainedTokenizerFast

    data = json.loads(path.read_text(encoding="utf-8"))
    eos, specials = file_eos(data if isinstance(data, dict) else {})
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=eos or EOS)
    if eos is None:
        listed = ", ".join(specials) if specials else "none"
        message = (f"student.tokenizer: {path} has no end-of-text token (its special tokens: {listed}); adding "
                   f"{EOS} (id {tokenizer.eos_token_id}) to end each document: the student's vocabulary is "
                   f"{len(tokenizer)} tokens, one more than the file's")
        if console is not None:
            from rich.markup import escape

            console.print(f"[yellow]{escape(message)}[/]")
        else:
            import warnings

            warnings.warn(message, UserWarning, stacklevel=3)
    return tokenizer


def student_tokenizer(cfg: StudentConfig, data: DatasetConfig, cache_dir: Path, console=None):
    """The tokenizer student.tokenizer names (trained, or loaded from a local path), or None (the teacher's).

    A tokenizer directory (tokenizer_config.json) keeps the EOS it names; a bare tokenizer.json file keeps the
    end-of-text token found among its special tokens (``file_eos`` gives the rule), and only a file without one
    gets ``<|endoftext|>`` added, said on ``console`` (a warning without one)."""
    if cfg.tokenizer is None:
        return None
    if cfg.tokenizer == "train":
        return trained_tokenizer(data, cfg.tokenizer_vocab_size, cache_dir, console)
    path = Path(cfg.tokenizer).expanduser()
    if not path.exists():
        raise UserError(f"student.tokenizer: {cfg.tokenizer!r} is neither `train` nor an existing tokenizer "
                        f"directory or tokenizer.json file")
    from transformers import AutoTokenizer

    try:
        if path.is_file():
            return tokenizer_file(path, console)
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - a user's files: any failure to parse them is a message, not a traceback
        raise UserError(f"student.tokenizer: could not load a tokenizer from {str(path)!r} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:300]})") from None
