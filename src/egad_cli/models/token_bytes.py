"""The UTF-8 bytes each vocabulary entry spells: what two tokenizers' ids are matched by (``losses.cross_vocab``)
and what bits per byte divide by (``evaluation.cross``).

A token's *string* in the vocabulary is not its text. Byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM) writes each
byte as a printable stand-in character (``Ġ`` for a space); SentencePiece-style vocabularies (Llama-2, Mistral)
write a space as ``▁`` and bytes they cannot spell as ``<0xNN>`` tokens. The two kinds are recognised from the
tokenizer's decoder and inverted here. A token keeps its leading space (``Ġcat`` and ``▁cat`` both spell b" cat"),
which is the token's text in context, even though a SentencePiece decoder strips it at the start of a string.

Special tokens (EOS, BOS, padding, chat markers) spell no text: ``None``. Other tokenizers fall back to decoding
each id on its own; an id that decodes to a replacement character (a piece of a multi-byte character that
the decoder cannot show alone) is ``None`` too, so it is never matched to another model's token.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["byte_lengths", "is_byte_fallback", "token_bytes"]

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_level_inverse() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_kinds(tokenizer) -> set[str]:
    """The types of the backend decoder and of every decoder in a Sequence, e.g. {"ByteLevel"}."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return set()
    node = json.loads(backend.to_str()).get("decoder") or {}
    kinds, todo = set(), [node]
    while todo:
        n = todo.pop()
        if isinstance(n, dict):
            kinds.add(n.get("type", ""))
            todo.extend(n.get("decoders") or [])
    return kinds


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for tid, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if added.special:
            ids.add(int(tid))
    return ids


def is_byte_fallback(piece: str | None) -> bool:
    """A SentencePiece byte-fallback piece, ``<0xNN>``."""
    return piece is not None and _BYTE_TOKEN.fullmatch(piece) is not None


def token_bytes(tokenizer) -> list[bytes | None]:
    """Per id (0 .. len(tokenizer) - 1), the bytes the token spells, or None for a special token or one whose
    bytes cannot be told from the vocabulary alone."""
    n = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = _special_ids(tokenizer)
    kinds = _decoder_kinds(tokenizer)
    added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
    out: list[bytes | None] = []
    if "ByteLevel" in kinds:
        inverse = _byte_level_inverse()
        for i, piece in enumerate(pieces):
            if i in special or piece is None:
                out.append(None)
            elif i in added:  # an added token is stored as its text, not in the byte alphabet
                out.append(piece.encode("utf-8"))
            else:
                try:
                    out.append(bytes(inverse[c] for c in piece))
                except KeyError:  # a character outside the byte alphabet: the piece is its own text
                    out.append(piece.encode("utf-8"))
        return out
    if kinds & {"Metaspace", "Replace", "ByteFallback"}:  # SentencePiece style
        for i, piece in enumerate(pieces):
            if i in special or piece is None:
                out.append(None)
                continue
            m = _BYTE_TOKEN.fullmatch(piece)
            out.append(bytes([int(m.group(1), 16)]) if m else piece.replace("▁", " ").encode("utf-8"))
        return out
    for i in range(n):  # anything else: what the id decodes to on its own
        if i in special:
            out.append(None)
            continue
        text = tokenizer.decode([i], clean_up_tokenization_spaces=False)
        out.append(None if "\ufffd" in text else text.encode("utf-8"))
    return out


def byte_lengths(tokenizer) -> Tensor:
    """[V] int64: the UTF-8 bytes each id spells (0 for special tokens), the denominator of bits per byte."""
    return torch.tensor([len(b) if b is not None else 0 for b in token_bytes(tokenizer)], dtype=torch.int64)
