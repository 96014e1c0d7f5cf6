"""The UTF-8 bytes of a text each of its tokens adds: the denominator of bits per byte.

What an id spells in the vocabulary is not always what it covers in the text: SentencePiece's first piece of a
text ("▁Hello") spells a space the text does not have. Bits per byte must divide by the text's own bytes, so
they are read from the tokenizer's offsets: each token adds the bytes past what the tokens before it cover, up to
its end. A character split over several tokens counts once (on its first token); text no token covers
(whitespace a tokenizer drops, offsets trimmed of a leading space) counts on the next token, and at the end on
the last one; zero-width tokens add 0. So a text's tokens add up to exactly its bytes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["added_bytes", "byte_table"]


def byte_table(text: str) -> np.ndarray:
    """table[c] = UTF-8 byte offset of character c (length len(text) + 1): char offsets -> byte offsets."""
    if text.isascii():
        return np.arange(len(text) + 1, dtype=np.int64)
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    widths = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
    return np.concatenate([[0], np.cumsum(widths)])


def added_bytes(text: str, offsets) -> np.ndarray:
    """[n] int64: the bytes of `text` each of its n tokens adds (see the module docstring), from the tokens'
    character offsets [(start, end)] * n; they sum to the text's UTF-8 length whenever n > 0."""
    n = len(offsets)
    if n == 0:
        return np.zeros(0, np.int64)
    table = byte_table(text)
    ends = table[np.asarray(offsets, dtype=np.int64).reshape(n, 2)[:, 1]]  # [n] byte offsets
    reach = np.maximum.accumulate(ends)  # [n] bytes covered by tokens 0..k
    out = np.maximum(0, ends - np.concatenate([[0], reach[:-1]]))  # [n] what token k covers past the earlier ones
    out[-1] += int(table[-1]) - int(reach[-1])  # uncovered trailing text
    return out
