"""Cross-tokenizer packing: cut a teacher's and a student's token streams into blocks over the same bytes.

Teacher and student tokenise the same text with different vocabularies. The ground truth they share is
the text's UTF-8 bytes, so every token gets a byte span ``[start, end)`` (``tokenize_bytes``) and the two
streams are compared byte by byte.

Boundary rule. There is a *clean boundary after token k at byte b* when ``ends[k] == b`` and no later
token starts before b, i.e. the next token that is not zero-width (if any) starts at b. A character that
byte-level BPE splits over several tokens gives them the same (or overlapping) character span: the first
token ends at the character's end, but the next one starts before it, so no boundary falls inside a
character. Zero-width tokens (a BOS a tokenizer inserts even with ``add_special_tokens=False``) are kept
in ``ids`` with ``start == end`` at the byte where they occur; they never make a boundary of their own and
shift nothing. The end of a stream is a clean boundary. A boundary is *shared* when both streams have a
clean boundary at the same byte.

Aligned predictions. A position predicts the next token. Student position j and teacher position i are
aligned (``t_index[j] == i``) when their next tokens j+1 and i+1 both start at the same clean boundary
byte b, are not zero-width, are loss tokens and spell their text: then both models predict "the text
after byte b" from the same text before b. The token at the predicting position may be zero-width (a BOS
at b): it is part of the context, not of the text.

A target *spells its text* when its vocabulary bytes (``models.token_bytes``) are a prefix of the text at
its start byte (special tokens: not checked). SentencePiece's dummy prefix breaks this at the start of
each tokenised part (a prompt, a text): "Hello" is tokenised "▁Hello", which spells b" Hello", so
pairing it with the other side's "Hello" would compare the probabilities of different strings; that
target is left unpaired, on either side. Given the round-trip check, only a part's first token can
fail, so only that one is checked.

Unicode normal forms. A tokenizer whose normalizer puts text in a canonical form (NFC, as Qwen2's does;
or NFD) reads "e" + U+0301 as "é": its offsets leave the combining mark uncovered and its decode gives
the composed text. So each document's prompt and text are put in that form before either side tokenises
them (a document already in it is left as it is), and both sides read the same normalised bytes. When
one side asks for NFC and the other for NFD, a document that differs between the two forms cannot be
read alike: it is skipped, with a warning giving the count. NFKC/NFKD fold distinct characters (lossy)
and are not applied: such tokenizers stay refused by the round-trip check.

Offsets, and how they are repaired.

* Some post-processors (``ByteLevel`` / ``RobertaProcessing`` with ``trim_offsets=true``, e.g. RoBERTa-style
  tokenizers) trim spaces off the offsets: ``" cat"`` reports only ``cat``, a lone space token reports an
  empty span. Trimmed offsets do not say where a token really starts, so the text is re-encoded with a
  copy of the tokenizer whose trimming is switched off, which gives the true spans (checked: same ids).
* Whitespace no token claims after that (tokenizers that drop whitespace, or trimming that could not be
  switched off) is given to the token after it: its start moves back to the previous token's end, so the
  tokens tile the text (trailing whitespace goes to the last token). That is exact for GPT-2-style
  pre-tokenisation, where spaces lead words; elsewhere it is a convention, as the space is in no token.
* Any other uncovered byte means the offsets do not describe the text: refused (``UserError``).
* A tokenizer whose decode does not give back the text (a lossy normalizer, an unknown token) is refused
  when the corpus is packed (``require_round_trip``): its tokens do not spell the bytes they cover.

Blocks (``pack_pair``). Documents are concatenated as ``packing.pack`` does (prompt tokens get no loss,
each text ends with EOS; an empty prompt gives no tokens); each EOS covers one virtual separator byte after its document on both sides,
so document ends align. A block starts at a shared boundary, takes up to ``block_size`` student tokens
and the teacher tokens of the same bytes, ending at the last shared boundary where neither side exceeds
``block_size``. With no shared boundary in the window it is cut anyway after ``block_size`` student
tokens (the teacher stops at the same byte or at its own ``block_size``): the few tokens at that edge have
no aligned partner until the streams meet again at a shared boundary. Both sides are padded with their
EOS id (mask False). Blocks partition each stream in order, so decoding a side's blocks in turn gives
back the corpus text. Budget, as in ``pack``: at most ``max_tokens // block_size`` blocks, and the last
student tokens that do not fill a whole ``block_size`` window are dropped.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
import warnings
import weakref
from dataclasses import dataclass, replace

import numpy as np
import torch

from egad_cli.data.corpus import Document
from egad_cli.data.packing import Packed
from egad_cli.data.text_bytes import byte_table
from egad_cli.errors import UserError
from egad_cli.models.token_bytes import token_bytes

#: part of the packed-data cache key (``packing.cache_key``): bump it when the blocks or the alignment change
#: 2: tokenizers that do not round-trip are refused when packing
#: 3: documents put in an NFC/NFD normalizer's form; targets that do not spell their text (dummy prefix) unpaired
ALIGNMENT_VERSION = 3

_FAST_HINT = ("use a fast tokenizer (transformers.PreTrainedTokenizerFast, i.e. a directory or hub id with a "
              "tokenizer.json)")


@dataclass
class Tokens:
    """One text's tokens with UTF-8 byte spans (not character spans); start == end for zero-width tokens."""

    ids: list[int]
    starts: list[int]
    ends: list[int]


# ---------------------------------------------------------------------------------------------------------
# tokenize_bytes: token ids with byte spans that tile the text


def tokenize_bytes(tokenizer, texts: list[str], key: str) -> list[Tokens]:
    """Tokenise texts (no added special tokens) and give each token its byte span in the text.

    Byte spans, because the two tokenizers only share the bytes: a character is one unit for one
    tokenizer and several tokens for another. Raises UserError naming `key` when the tokenizer gives no
    offsets or its offsets leave text uncovered."""
    _require_fast(tokenizer, key)
    if not texts:
        return []
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc.get("offset_mapping")
    if offsets is None:
        raise UserError(f"{key}: {type(tokenizer).__name__} returned no offset mapping; cross-tokenizer "
                        f"distillation aligns the two tokenizers on byte offsets, so {_FAST_HINT}")
    ids = [list(x) for x in enc["input_ids"]]
    offsets = _untrimmed_offsets(tokenizer, texts, ids) or offsets
    special = _special_ids(tokenizer)
    return [_byte_spans(text, row, offs, special, key) for text, row, offs in zip(texts, ids, offsets)]


def require_round_trip(tokenizer, texts: list[tuple[str, str]], tokens: list[Tokens], key: str) -> None:
    """Refuse a tokenizer that does not give back the text it encoded (texts: (document key, text) pairs).

    A lossy normalizer (lowercasing, NFKC, collapsed whitespace) or an unknown token means the model never
    reads some of the text's bytes: the two models would not predict the same text, and bits per byte would
    count bytes one of them cannot produce. Checked once, when the corpus is packed (the result is cached).
    Only special tokens the tokenizer inserted (zero-width) are left out of the decode: a special token the
    text spells literally, or byte-fallback pieces a tokenizer marks special, are text and must decode to it.
    One leading space may be missing from the decode (SentencePiece's dummy prefix, see below)."""
    special = _special_ids(tokenizer)
    ids = [[i for i, a, b in zip(t.ids, t.starts, t.ends) if not (a == b and i in special)] for t in tokens]
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    for (doc, text), back in zip(texts, decoded, strict=True):
        # SentencePiece's dummy prefix: a text that starts with one space reads as one that does not
        # (its first piece "▁word" covers the space); that one character is the convention, not a loss
        if back != text and not (text.startswith(" ") and back == text[1:]):
            at = next((i for i, (a, b) in enumerate(zip(text, back)) if a != b), min(len(text), len(back)))
            raise UserError(
                f"{key}: the tokenizer does not give back the text it encoded (document {doc!r}, character {at}: "
                f"the text has {text[at:at + 24]!r}, decoding its tokens gives {back[at:at + 24]!r}); a lossy "
                f"normalizer or an unknown token drops text, so the two models would not read the same bytes. "
                f"Use a lossless tokenizer: byte-level BPE, or SentencePiece with byte fallback "
                f"(student.tokenizer=train trains a byte-level BPE on the corpus)")


def _require_fast(tokenizer, key: str) -> None:
    """Refuse a slow tokenizer up front: it silently ignores return_offsets_mapping."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{key}: {type(tokenizer).__name__} is a slow (Python) tokenizer, which gives no "
                        f"character offsets; cross-tokenizer distillation aligns the two tokenizers on byte "
                        f"offsets, so {_FAST_HINT}")


def _special_ids(tokenizer) -> set[int]:
    """Ids of special tokens: only these may sit zero-width in the stream (an inserted BOS or EOS)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


#: tokenizer -> (its post-processor's state, an untrimmed copy of its backend): built once per tokenizer
_UNTRIMMED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _untrimmed_offsets(tokenizer, texts: list[str], ids: list[list[int]]):
    """Character offsets with whitespace trimming switched off, or None (no trimming, or the copy
    disagrees on the ids, in which case the gap repair of `_byte_spans` takes over)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    processor = getattr(backend, "post_processor", None)
    if processor is None:
        return None
    state = processor.__getstate__()
    state = state.encode() if isinstance(state, str) else state
    if b'"trim_offsets":true' not in state.replace(b" ", b""):
        return None
    try:
        cached = _UNTRIMMED.get(tokenizer)
    except TypeError:  # not weak-referenceable: no cache
        cached = None
    if cached is None or cached[0] != state:
        cached = (state, _untrimmed_copy(backend))
        try:
            _UNTRIMMED[tokenizer] = cached
        except TypeError:
            pass
    copy = cached[1]
    encs = copy.encode_batch(list(texts), add_special_tokens=False)
    if [e.ids for e in encs] != ids:
        return None
    return [e.offsets for e in encs]


def _untrimmed_copy(backend):
    """A copy of the backend tokenizer whose post-processors keep whitespace in the offsets."""
    from tokenizers import Tokenizer

    spec = json.loads(backend.to_str())
    _trim_off(spec.get("post_processor"))
    copy = Tokenizer.from_str(json.dumps(spec))
    copy.no_truncation()
    copy.no_padding()
    return copy


def _trim_off(node) -> None:
    """Set every trim_offsets in a post-processor spec (nested Sequences included) to false."""
    if isinstance(node, dict):
        if node.get("trim_offsets"):
            node["trim_offsets"] = False
        for value in node.values():
            _trim_off(value)
    elif isinstance(node, list):
        for value in node:
            _trim_off(value)


def _byte_spans(text: str, ids: list[int], offsets, special: set[int], key: str) -> Tokens:
    """Convert one text's character offsets to byte spans; repair them when they do not tile the text."""
    data = text.encode("utf-8", "surrogatepass")
    table = byte_table(text)
    flat = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int64, count=2 * len(ids))
    spans = table[flat.reshape(-1, 2)]  # [n, 2] byte offsets
    starts, ends = spans[:, 0], spans[:, 1]  # [n], [n]
    if len(ids) and (ends > starts).all():
        reach = np.maximum.accumulate(ends)  # [n] bytes covered by tokens 0..k
        if starts[0] == 0 and (starts[1:] <= reach[:-1]).all() and reach[-1] == len(data):
            return Tokens(list(ids), starts.tolist(), ends.tolist())  # the common case: already tiles
    return _repair(data, ids, starts.tolist(), ends.tolist(), special, key)


def _repair(data: bytes, ids: list[int], starts: list[int], ends: list[int], special: set[int],
            key: str) -> Tokens:
    """Place zero-width special tokens where they occur and give unclaimed whitespace to the next token
    (see the module docstring); refuse offsets that leave other bytes uncovered."""
    out_s: list[int] = []
    out_e: list[int] = []
    covered, last = 0, -1  # bytes covered so far; index of the last token that covers text
    for k, (s, e) in enumerate(zip(starts, ends)):
        if s == e and (ids[k] in special or not _blank(data[covered:e])):
            out_s.append(covered)  # inserted special token (often reported at (0, 0)): zero-width, here
            out_e.append(covered)
            continue
        if s > covered:
            if not _blank(data[covered:s]):
                raise _uncovered(key, data, covered, s)
            s = covered  # whitespace no token claims (or a trimmed lone-space token): the next token's
        out_s.append(s)
        out_e.append(e)
        covered, last = max(covered, e), k
    if covered < len(data):
        if not _blank(data[covered:]):
            raise _uncovered(key, data, covered, len(data))
        if last >= 0:
            out_e[last] = len(data)  # trailing whitespace: the last token's
    return Tokens(list(ids), out_s, out_e)


def _blank(chunk: bytes) -> bool:
    """Whether bytes are whitespace (Unicode whitespace too), and not empty."""
    return chunk.decode("utf-8", "ignore").isspace()


def _uncovered(key: str, data: bytes, start: int, end: int) -> UserError:
    snippet = data[start:min(end, start + 40)].decode("utf-8", "replace")
    return UserError(f"{key}: the tokenizer's offsets leave bytes {start}..{end} of a text covered by no token "
                     f"({snippet!r}), so its tokens cannot be aligned with the other tokenizer's; {_FAST_HINT} "
                     f"whose offsets cover the text (a tokenizer that normalises or drops characters cannot "
                     f"be used across tokenizers)")


# ---------------------------------------------------------------------------------------------------------
# streams: documents concatenated, with global byte spans and the clean cuts


@dataclass
class _Stream:
    """One side's concatenated tokens. A cut c (0..n) splits tokens [:c] from [c:]."""

    eos: int
    ids: np.ndarray  # [n] int64
    starts: np.ndarray  # [n] int64, global byte offsets
    ends: np.ndarray  # [n] int64
    mask: np.ndarray  # [n] bool, loss token
    virtual: np.ndarray  # [n] bool, EOS (covers the virtual separator byte)
    spells: np.ndarray  # [n] bool, the token's vocabulary bytes begin the text at its start (not a dummy prefix)

    def __post_init__(self) -> None:
        n = len(self.ids)
        big = np.iinfo(np.int64).max
        #: reach[c]: the furthest byte tokens [:c] cover; low[c]: the earliest byte tokens [c:] start at
        self.reach = np.concatenate([[-1], np.maximum.accumulate(self.ends)]) if n else np.array([-1])  # [n+1]
        low = np.minimum.accumulate(self.starts[::-1])[::-1] if n else np.zeros(0, np.int64)
        self.low = np.concatenate([low, [big]])  # [n+1]
        self.clean = self.reach <= self.low  # [n+1] no token straddles the cut
        self.cut_byte = np.where(np.arange(n + 1) < n, self.low, self.reach)  # [n+1] non-decreasing
        cuts = np.nonzero(self.clean)[0]
        self.clean_bytes, first = np.unique(self.cut_byte[cuts], return_index=True)
        self.first_cut = cuts[first]  # smallest clean cut at each clean byte: zero-width tokens go with what follows
        zero = self.ends == self.starts
        before = self.reach[:-1]  # [n] bytes covered before token k
        #: bytes a token adds (a character split over tokens counts once, on its first token); EOS adds 0
        self.nbytes = np.where(self.virtual, 0, np.maximum(0, self.ends - np.maximum(self.starts, before)))
        #: token k is a target that starts at a clean boundary and spells its text (predicted from k - 1)
        self.anchored = ~zero & self.clean[:-1] & (self.starts == self.low[:-1]) & (np.arange(n) > 0) & self.spells

    @property
    def n(self) -> int:
        return len(self.ids)

    def cut_at(self, byte: int) -> int:
        """The smallest clean cut at `byte`, or -1 when there is none."""
        i = np.searchsorted(self.clean_bytes, byte)
        return int(self.first_cut[i]) if i < len(self.clean_bytes) and self.clean_bytes[i] == byte else -1


class _StreamBuilder:
    """Collects one side's documents: prompt tokens (no loss), text tokens and EOS (loss)."""

    def __init__(self, tokenizer, key: str):
        _require_fast(tokenizer, key)
        self.tokenizer, self.key = tokenizer, key
        self.eos = tokenizer.eos_token_id
        if self.eos is None:
            raise UserError(f"{key}: the tokenizer has no EOS token, which ends every document; use a tokenizer "
                            f"with an eos_token (or set one in its tokenizer_config.json)")
        self.parts: list[tuple] = []  # (ids, starts, ends, loss, virtual, spells)
        self.count = 0
        #: per id, the bytes the token spells (None: special); read once, as it walks the whole vocabulary.
        #: None for a stand-in with no vocabulary to read: its tokens are taken to spell their text
        self.spelling = token_bytes(tokenizer) if hasattr(tokenizer, "convert_ids_to_tokens") else None

    def add(self, docs: list[Document], offsets: list[int]) -> None:
        """Append documents; offsets[d] is the global byte where document d's prompt starts."""
        # empty prompts are not tokenised: a tokenizer that always inserts a BOS would add one with no text
        asked = [d.prompt for d in docs if d.prompt]
        got = iter(tokenize_bytes(self.tokenizer, asked, self.key))
        prompts = [next(got) if d.prompt else Tokens([], [], []) for d in docs]
        texts = tokenize_bytes(self.tokenizer, [d.text for d in docs], self.key)
        prompted = [(d, p) for d, p in zip(docs, prompts) if d.prompt]
        require_round_trip(self.tokenizer, [(d.key, d.prompt) for d, _ in prompted] + [(d.key, d.text) for d in docs],
                           [p for _, p in prompted] + texts, self.key)
        for doc, at, prompt, text in zip(docs, offsets, prompts, texts):
            prompt_data, text_data = (x.encode("utf-8", "surrogatepass") for x in (doc.prompt, doc.text))
            text_at = at + len(prompt_data)
            end = text_at + len(text_data)
            self._part(prompt, prompt_data, at, loss=False)
            self._part(text, text_data, text_at, loss=True)
            self.parts.append(([self.eos], [end], [end + 1], True, True, [True]))
            self.count += len(prompt.ids) + len(text.ids) + 1

    def _part(self, tokens: Tokens, data: bytes, at: int, loss: bool) -> None:
        if tokens.ids:
            self.parts.append((tokens.ids, np.asarray(tokens.starts, np.int64) + at,
                               np.asarray(tokens.ends, np.int64) + at, loss, False, self._spells(tokens, data)))

    def _spells(self, tokens: Tokens, data: bytes) -> np.ndarray:
        """[n] bool: token k's vocabulary bytes begin the part's text at its start. Only the part's first
        token that is not zero-width is checked: it is where a dummy prefix sits ("▁Hello" spells b" Hello"
        over "Hello"), and the round trip, already checked, makes the later ones spell the text."""
        ok = np.ones(len(tokens.ids), bool)
        k = next((k for k, (a, b) in enumerate(zip(tokens.starts, tokens.ends)) if a != b), None)
        if k is not None and self.spelling is not None:
            spelt = self.spelling[tokens.ids[k]]
            ok[k] = spelt is None or data.startswith(spelt, tokens.starts[k])
        return ok

    def build(self) -> _Stream:
        def cat(i: int, dtype) -> np.ndarray:
            return np.concatenate([np.asarray(p[i], dtype=dtype) for p in self.parts]) if self.parts \
                else np.zeros(0, dtype)

        flags = [np.full(len(p[0]), p[3]) for p in self.parts]
        virt = [np.full(len(p[0]), p[4]) for p in self.parts]
        return _Stream(self.eos, cat(0, np.int64), cat(1, np.int64), cat(2, np.int64),
                       np.concatenate(flags).astype(bool) if flags else np.zeros(0, bool),
                       np.concatenate(virt).astype(bool) if virt else np.zeros(0, bool), cat(5, bool))


#: the Unicode forms a normalizer may put text in without losing any (NFKC/NFKD fold distinct characters)
_CANONICAL = ("NFC", "NFD")


def _canonical_form(tokenizer) -> str | None:
    """The canonical form (NFC or NFD) the tokenizer's normalizer leaves text in, or None."""
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    if normalizer is None:
        return None
    forms = _forms(json.loads(normalizer.__getstate__()))  # the "normalizer" entry of the tokenizer's JSON
    return forms[-1] if forms else None  # a Sequence applies its members in order: the last form wins


def _forms(node) -> list[str]:
    """The canonical forms a normalizer spec applies, in order (the members of Sequences included)."""
    if not isinstance(node, dict):
        return []
    if node.get("type") in _CANONICAL:
        return [node["type"]]
    return [form for member in node.get("normalizers") or [] for form in _forms(member)]


def _in_form(docs: list[Document], forms: set[str]) -> list[Document]:
    """The documents in the canonical form the tokenizers read them in. With two forms (NFC and NFD), the
    documents that differ between them are left out: one side would read text the other does not."""
    out = []
    for d in docs:
        if all(unicodedata.is_normalized(f, x) for f in forms for x in (d.prompt, d.text)):
            out.append(d)  # the common case: unchanged, bit for bit
        elif len(forms) == 1:
            [form] = forms
            out.append(replace(d, prompt=unicodedata.normalize(form, d.prompt),
                               text=unicodedata.normalize(form, d.text)))
    return out


def _streams(docs: list[Document], teacher_tok, student_tok, max_tokens: int, teacher_key: str,
             student_key: str) -> tuple[_Stream, _Stream]:
    """Both sides over the same documents; like `pack`, reading stops once the student has max_tokens."""
    student, teacher = _StreamBuilder(student_tok, student_key), _StreamBuilder(teacher_tok, teacher_key)
    forms = {key: form for key, tok in ((teacher_key, teacher_tok), (student_key, student_tok))
             if (form := _canonical_form(tok))}
    at, batch, read, kept = 0, 64, 0, 0
    for first in range(0, len(docs), batch):
        chunk = docs[first:first + batch]
        read += len(chunk)
        chunk = _in_form(chunk, set(forms.values()))
        kept += len(chunk)
        offsets = []
        for d in chunk:
            offsets.append(at)
            at += len(d.prompt.encode("utf-8", "surrogatepass")) + len(d.text.encode("utf-8", "surrogatepass")) + 1
        student.add(chunk, offsets)
        teacher.add(chunk, offsets)
        if student.count >= max_tokens:
            break
    if kept < read:
        asked = " and ".join(f"{key} to {form}" for key, form in forms.items())
        warnings.warn(f"{read - kept} of {read} document(s) skipped: the tokenizers normalise text to different "
                      f"Unicode forms ({asked}) and these documents differ between the two (they hold characters "
                      f"that NFC composes and NFD decomposes), so the two sides cannot read them alike",
                      stacklevel=3)
    return student.build(), teacher.build()


# ---------------------------------------------------------------------------------------------------------
# blocks


def _shared_cut(s: _Stream, t: _Stream, cs: int, ct: int, size: int) -> tuple[int, int] | None:
    """The furthest shared clean boundary with at most `size` tokens on each side: (student cut, teacher cut)."""
    t_limit = min(ct + size, t.n)
    t_reach = int(t.cut_byte[t_limit])  # no teacher cut within the window lies past this byte
    c = min(cs + size, int(np.searchsorted(s.cut_byte, t_reach, side="right")) - 1)
    while c > cs:
        if s.clean[c]:
            byte = int(s.cut_byte[c])
            sc = s.cut_at(byte)
            if sc <= cs:
                return None  # every lower cut lies at this byte or before: the block would be empty
            tc = t.cut_at(byte)
            if tc < ct and t.clean[ct] and t.cut_byte[ct] == byte:
                tc = ct  # after a forced cut the teacher may stand among zero-width tokens at this byte
            if ct <= tc <= t_limit:
                return sc, tc
            c = sc
        c -= 1
    return None


def _forced_cut(s: _Stream, t: _Stream, cs: int, ct: int, size: int) -> tuple[int, int]:
    """No shared boundary in the window: `size` student tokens; the teacher up to the same byte or `size`."""
    sc = cs + size
    byte = int(s.cut_byte[sc])
    tc = int(np.searchsorted(t.low, byte, side="left"))  # first teacher cut whose tokens all start at >= byte
    return sc, min(max(tc, ct), ct + size, t.n)


def _partners(s: _Stream, t: _Stream) -> np.ndarray:
    """partner[c]: the teacher target that starts at the same clean byte as student target c, both anchored
    (spelling their text) loss tokens, else -1. [n_student]"""
    s_ok = s.anchored & s.mask
    t_idx = np.nonzero(t.anchored & t.mask)[0]
    t_bytes = t.starts[t_idx]  # strictly increasing: one clean non-zero-width target per byte
    partner = np.full(s.n, -1, dtype=np.int64)
    if not len(t_idx):
        return partner
    s_idx = np.nonzero(s_ok)[0]
    pos = np.minimum(np.searchsorted(t_bytes, s.starts[s_idx]), len(t_bytes) - 1)
    hit = t_bytes[pos] == s.starts[s_idx]
    partner[s_idx[hit]] = t_idx[pos[hit]]
    return partner


def _pad(values: np.ndarray, size: int, fill) -> np.ndarray:
    out = np.full(size, fill, dtype=values.dtype)
    out[:len(values)] = values
    return out


def pack_pair(docs: list[Document], teacher_tok, student_tok, block_size: int, max_tokens: int,
              teacher_key: str = "teacher", student_key: str = "student.tokenizer") -> Packed:
    """Pack documents for a teacher and a student with different tokenizers into blocks over the same bytes.

    ids/mask are the student's; extra carries the teacher's tokens (t_ids, t_mask), the alignment
    (t_index: the teacher position aligned with each student predicting position, or -1) and the byte
    length of every token (s_bytes, t_bytes) for bits per byte. See the module docstring."""
    s, t = _streams(docs, teacher_tok, student_tok, max_tokens, teacher_key, student_key)
    cuts: list[tuple[int, int, int, int]] = []
    cs = ct = 0
    while len(cuts) < max_tokens // block_size and cs + block_size <= s.n:
        sc, tc = _shared_cut(s, t, cs, ct, block_size) or _forced_cut(s, t, cs, ct, block_size)
        cuts.append((cs, sc, ct, tc))
        cs, ct = sc, tc
    return _assemble(s, t, cuts, block_size)


def _assemble(s: _Stream, t: _Stream, cuts: list[tuple[int, int, int, int]], size: int) -> Packed:
    """Padded block tensors and the per-block alignment from the (student, teacher) token ranges."""
    n = len(cuts)
    ids, mask = np.full((n, size), s.eos, np.int64), np.zeros((n, size), bool)  # [n, L]
    t_ids, t_mask = np.full((n, size), t.eos, np.int64), np.zeros((n, size), bool)  # [n, L]
    s_bytes, t_bytes = np.zeros((n, size), np.int32), np.zeros((n, size), np.int32)  # [n, L]
    t_index = np.full((n, max(size - 1, 0)), -1, np.int64)  # [n, L-1]
    partner = _partners(s, t)  # [n_student]
    for b, (s0, s1, t0, t1) in enumerate(cuts):
        ids[b, :s1 - s0], mask[b, :s1 - s0], s_bytes[b, :s1 - s0] = s.ids[s0:s1], s.mask[s0:s1], s.nbytes[s0:s1]
        t_ids[b, :t1 - t0], t_mask[b, :t1 - t0], t_bytes[b, :t1 - t0] = t.ids[t0:t1], t.mask[t0:t1], t.nbytes[t0:t1]
        targets = np.arange(s0 + 1, s1)  # student targets in the block; predicted from position c - 1
        tc = partner[targets]
        inside = (tc > t0) & (tc < t1)  # the teacher target and its predicting position are in the block
        t_index[b, targets[inside] - 1 - s0] = tc[inside] - 1 - t0
    extra = {"t_ids": torch.from_numpy(t_ids), "t_mask": torch.from_numpy(t_mask),
             "t_index": torch.from_numpy(t_index), "s_bytes": torch.from_numpy(s_bytes),
             "t_bytes": torch.from_numpy(t_bytes)}
    return Packed(ids=torch.from_numpy(ids), mask=torch.from_numpy(mask), extra=extra)


def aligned_share(packed: Packed) -> float:
    """Share of the student's predicting positions with a loss target that have an aligned teacher
    position (0.0 when there are none): how much of the text the cross-tokenizer loss can see."""
    targets = int(packed.mask[:, 1:].sum())
    return float((packed.extra["t_index"] >= 0).sum()) / targets if targets else 0.0
