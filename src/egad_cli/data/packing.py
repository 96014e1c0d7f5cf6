"""Tokenise documents, pack them into fixed-size blocks with a loss mask, and cache the result."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from egad_cli.config.schema import DatasetConfig
from egad_cli.data.corpus import Document, iter_documents, order_key, source_files, split_of
from egad_cli.data.text_bytes import added_bytes
from egad_cli.errors import UserError

CACHE_VERSION = 2  #: 2: blocks carry the text bytes of each token (``text_bytes``); tokenizers keyed whole


@dataclass
class Packed:
    """Blocks of token ids. mask[b, t] says whether token t is a loss token (a response token)."""

    ids: torch.Tensor  #: [n_blocks, block_size] int64
    mask: torch.Tensor  #: [n_blocks, block_size] bool
    #: per-block tensors beside ids (cross-tokenizer: the teacher's tokens and the alignment,
    #: ``data.alignment.pack_pair``); indexed like ids and carried into every batch
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.ids.shape[0]


@dataclass
class Splits:
    train: Packed
    val: Packed


def vocabulary_fingerprint(tokenizer) -> str:
    """Which ids mean which strings (the vocabulary and EOS): what a teacher cache's stored ids refer to."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps([items, tokenizer.eos_token_id]).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """What a text's tokens depend on: the tokenizer's whole definition. A fast tokenizer's serialised form (its
    tokenizer.json: vocabulary, merges, normalizer, pre-tokenizer, post-processor, decoder, added tokens), so a
    changed normalizer or pre-tokenizer with the same vocabulary is another tokenizer; a slow one has no
    serialised form: its class, vocabulary and special tokens. Plus the EOS that ends every document."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else \
        [type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())]
    blob = json.dumps([definition, tokenizer.eos_token_id, sorted(map(str, tokenizer.all_special_tokens))])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_key(cfg: DatasetConfig, tokenizer, student_tokenizer=None) -> str:
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in source_files(cfg)]
    # document_masks changes what the models attend to, not the packed tokens: left out of the key
    settings = {k: v for k, v in asdict(cfg).items() if k != "document_masks"}
    prints = [tokenizer_fingerprint(tokenizer)]
    if student_tokenizer is not None:  # cross-tokenizer blocks: both tokenisations and their alignment
        from egad_cli.data.alignment import ALIGNMENT_VERSION

        prints += [tokenizer_fingerprint(student_tokenizer), ALIGNMENT_VERSION]
    blob = json.dumps([CACHE_VERSION, settings, *prints, files], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def pack(docs: list[Document], tokenizer, block_size: int, max_tokens: int) -> Packed:
    """Concatenate documents (each ends with EOS) and cut into blocks; the remainder is dropped.

    A fast tokenizer's blocks also carry ``extra["text_bytes"]``: the UTF-8 bytes of its text each token adds
    (``data.text_bytes``; EOS adds 0), what bits per byte divide by."""
    eos = tokenizer.eos_token_id
    offsets = bool(getattr(tokenizer, "is_fast", False))  # a slow tokenizer gives none
    ids: list[int] = []
    mask: list[bool] = []
    nbytes: list[np.ndarray] = []
    batch = 64
    for start in range(0, len(docs), batch):
        chunk = docs[start:start + batch]
        encoded = {}  # part -> (texts, ids, character offsets) of the chunk's documents
        for part in ("prompt", "text"):
            texts = [getattr(d, part) for d in chunk]
            enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets)
            encoded[part] = (texts, enc["input_ids"], enc["offset_mapping"] if offsets else [None] * len(texts))
        for d in range(len(chunk)):
            for part, loss in (("prompt", False), ("text", True)):
                text, part_ids, offs = (x[d] for x in encoded[part])
                ids.extend(part_ids)
                mask.extend([loss] * len(part_ids))
                if offsets:
                    nbytes.append(added_bytes(text, offs))
            ids.append(eos)  # ends the document: a loss token that spells no text
            mask.append(True)
            if offsets:
                nbytes.append(np.zeros(1, np.int64))
        if len(ids) >= max_tokens:
            break
    n_blocks = min(len(ids), max_tokens) // block_size
    n = n_blocks * block_size
    extra = {}
    if offsets:
        flat = np.concatenate(nbytes)[:n] if nbytes else np.zeros(0, np.int64)
        extra["text_bytes"] = torch.from_numpy(flat.astype(np.int32)).view(n_blocks, block_size)
    return Packed(ids=torch.tensor(ids[:n], dtype=torch.long).view(n_blocks, block_size),
                  mask=torch.tensor(mask[:n], dtype=torch.bool).view(n_blocks, block_size), extra=extra)


def build_splits(cfg: DatasetConfig, tokenizer, cache_dir: Path | None = None, student_tokenizer=None) -> Splits:
    """The packed train/validation splits, from the cache when the corpus and tokenizer are unchanged.
    student_tokenizer: a cross-tokenizer run's student tokenizer: ids are then the student's tokens and
    ``extra`` holds the teacher's and the alignment (``data.alignment.pack_pair``)."""
    cache_file = None
    if cache_dir is not None:
        key = cache_key(cfg, tokenizer, student_tokenizer)
        cache_file = Path(cache_dir).expanduser() / "data" / f"{cfg.name}-{key}.pt"
        if cache_file.is_file():
            blob = torch.load(cache_file, weights_only=True)
            return Splits(*(Packed(blob[f"{part}_ids"], blob[f"{part}_mask"],
                                   {k[len(part) + 1:]: v for k, v in blob.items()
                                    if k.startswith(f"{part}_") and k not in (f"{part}_ids", f"{part}_mask")})
                            for part in ("train", "val")))
    docs = sorted(iter_documents(cfg), key=lambda d: order_key(d.key))
    train_docs = [d for d in docs if split_of(d.key, cfg.val_fraction) == "train"]
    val_docs = [d for d in docs if split_of(d.key, cfg.val_fraction) == "val"]
    where = f"dataset={cfg.name}"
    if not any(d.text.strip() or d.prompt.strip() for d in docs):  # no documents, or only empty ones
        files = [str(p) for p in source_files(cfg)]
        listed = f" (read {len(files)} file(s): {', '.join(files[:5])}{', …' if len(files) > 5 else ''})" \
            if files else ""
        raise UserError(f"{where}: the corpus has no text{listed}; check dataset.paths / dataset.hf_name")
    if not train_docs or not val_docs:
        raise UserError(f"{where}: {len(docs)} document(s) give an empty {'train' if not train_docs else 'validation'} "
                        f"split at dataset.val_fraction={cfg.val_fraction}; add documents or change val_fraction")
    if student_tokenizer is None:
        splits = Splits(pack(train_docs, tokenizer, cfg.block_size, cfg.max_train_tokens),
                        pack(val_docs, tokenizer, cfg.block_size, cfg.max_val_tokens))
    else:
        from egad_cli.data.alignment import pack_pair

        splits = Splits(pack_pair(train_docs, tokenizer, student_tokenizer, cfg.block_size, cfg.max_train_tokens),
                        pack_pair(val_docs, tokenizer, student_tokenizer, cfg.block_size, cfg.max_val_tokens))
    for name, part in (("train", splits.train), ("validation", splits.val)):
        if len(part) == 0:
            raise UserError(f"{where}: the {name} split has fewer than dataset.block_size={cfg.block_size} tokens; "
                            f"add text or lower dataset.block_size")
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp-{os.getpid()}")  # own file: ranks of a torchrun may write at once
        torch.save({f"{part}_{k}": v for part, packed in (("train", splits.train), ("val", splits.val))
                    for k, v in {"ids": packed.ids, "mask": packed.mask, **packed.extra}.items()}, tmp)
        tmp.replace(cache_file)
    return splits


def pack_all(cfg: DatasetConfig, tokenizer) -> Packed:
    """Every document of the corpus, packed, ignoring the train/validation split (``split=all``: files the
    user holds out themselves). Budget: dataset.max_train_tokens + dataset.max_val_tokens. Not cached."""
    docs = sorted(iter_documents(cfg), key=lambda d: order_key(d.key))
    packed = pack(docs, tokenizer, cfg.block_size, cfg.max_train_tokens + cfg.max_val_tokens)
    if len(packed) == 0:
        raise UserError(f"dataset={cfg.name}: the files hold fewer than dataset.block_size={cfg.block_size} tokens; "
                        f"add text or lower dataset.block_size")
    return packed
