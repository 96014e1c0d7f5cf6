"""Corpora: deterministic splits by document hash, response-only masks for prompt/response data, packing into
fixed blocks, and the tokenised-data cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import write_corpus

from egad_cli.config.schema import DatasetConfig
from egad_cli.data import Document, build_splits, iter_documents, packing, split_of
from egad_cli.data.packing import pack
from egad_cli.errors import UserError
from egad_cli.models.tokenizers import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def byte_ids(text: str) -> list[int]:
    tok = byte_tokenizer()
    return tok(text, add_special_tokens=False)["input_ids"]


def jsonl_cfg(paths, **kw) -> DatasetConfig:
    return DatasetConfig(name="jsonl", kind="jsonl", paths=[str(p) for p in paths], **kw)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------ splits


def test_split_is_a_pure_function_of_the_document():
    keys = [f"doc{i}" for i in range(2000)]
    first = [split_of(k, 0.05) for k in keys]
    assert first == [split_of(k, 0.05) for k in keys]
    share = first.count("val") / len(keys)
    assert 0.03 < share < 0.07  # about val_fraction
    # pinned: the split must not change between processes, machines or versions (Python's hash() would)
    assert "".join("v" if split_of(f"doc{i}", 0.3) == "val" else "t" for i in range(24)) == PINNED


# Computed once; a change means every user's train/validation split moves (bump CACHE_VERSION with it).
PINNED = "vttvttvtvvtvvvvtttttvtvt"


def test_larger_val_fraction_only_moves_documents_into_val():
    keys = [f"k{i}" for i in range(500)]
    small = {k for k in keys if split_of(k, 0.05) == "val"}
    large = {k for k in keys if split_of(k, 0.2) == "val"}
    assert small < large


def test_same_jsonl_document_gets_the_same_split_wherever_it_is(tmp_path):
    rows = [{"prompt": f"q{i}?", "response": f"a{i}."} for i in range(30)]
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "other", "response": "row"}] + rows[::-1])
    docs_a = {d.prompt: d for d in iter_documents(jsonl_cfg([a]))}
    docs_b = {d.prompt: d for d in iter_documents(jsonl_cfg([b]))}
    for prompt, doc in docs_a.items():
        assert docs_b[prompt].key == doc.key  # by content, not by file or line number
        assert split_of(docs_b[prompt].key, 0.3) == split_of(doc.key, 0.3)


def test_jsonl_records_end_at_newlines_only(tmp_path):
    """JSON written with ensure_ascii=False keeps U+2028, U+0085 and friends raw inside its strings: they are
    text, not line ends (str.splitlines would cut the record there). A CRLF file reads as its LF twin, with the
    same document keys (so the same splits)."""
    rows = [{"prompt": "a\u2028b\u0085c\x1cd", "response": "e\u2029f\x0bg"}, {"prompt": "p", "response": "r"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    assert "\u2028" in text  # raw in the file
    lf, crlf = tmp_path / "lf.jsonl", tmp_path / "crlf.jsonl"
    lf.write_text(text, encoding="utf-8")
    crlf.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    docs = list(iter_documents(jsonl_cfg([lf])))
    assert [(d.prompt, d.text) for d in docs] == [(r["prompt"], r["response"]) for r in rows]
    assert [d.key for d in iter_documents(jsonl_cfg([crlf]))] == [d.key for d in docs]


def test_adding_documents_does_not_move_existing_ones(tmp_path, tok):
    rows = [{"prompt": f"question {i}: ", "response": f"answer number {i} " * 3} for i in range(60)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    cfg = jsonl_cfg([path], val_fraction=0.3, block_size=8)
    val_before = {d.key for d in iter_documents(cfg) if split_of(d.key, 0.3) == "val"}
    write_jsonl(path, rows + [{"prompt": f"new {i}", "response": "x"} for i in range(40)])
    val_after = {d.key for d in iter_documents(cfg) if split_of(d.key, 0.3) == "val"}
    assert val_before and val_before <= val_after


def test_build_splits_is_deterministic(tmp_path, tok):
    corpus = write_corpus(tmp_path / "corpus", n_files=30)
    cfg = DatasetConfig(name="text", kind="text", paths=[f"{corpus}/*.txt"], block_size=16, val_fraction=0.3)
    a, b = build_splits(cfg, tok), build_splits(cfg, tok)
    assert torch.equal(a.train.ids, b.train.ids) and torch.equal(a.val.ids, b.val.ids)
    assert len(a.train) > len(a.val) > 0


# ------------------------------------------------------------------------------------------ packing


def test_pack_concatenates_documents_with_eos_and_cuts_blocks(tok):
    docs = [Document("a", "hello"), Document("b", "world!!")]
    packed = pack(docs, tok, block_size=4, max_tokens=10_000)
    flat = byte_ids("hello") + [tok.eos_token_id] + byte_ids("world!!") + [tok.eos_token_id]  # 14 tokens
    assert packed.ids.shape == (3, 4) and packed.mask.shape == (3, 4)  # the 2-token remainder is dropped
    assert packed.ids.dtype == torch.long and packed.mask.dtype == torch.bool
    assert packed.ids.flatten().tolist() == flat[:12]
    assert packed.mask.all()
    assert len(packed) == 3


def test_pack_respects_the_token_budget(tok):
    docs = [Document(str(i), "x" * 50) for i in range(10)]
    packed = pack(docs, tok, block_size=8, max_tokens=100)
    assert packed.ids.shape == (100 // 8, 8)


def test_jsonl_masks_prompt_tokens(tok):
    docs = [Document("1", text="world", prompt="hello "), Document("2", text="ok", prompt="q: ")]
    packed = pack(docs, tok, block_size=6, max_tokens=10_000)
    eos = tok.eos_token_id
    ids = byte_ids("hello ") + byte_ids("world") + [eos] + byte_ids("q: ") + byte_ids("ok") + [eos]  # 18
    mask = [False] * 6 + [True] * 6 + [False] * 3 + [True] * 3
    assert packed.ids.shape == (3, 6)
    assert packed.ids.flatten().tolist() == ids
    assert packed.mask.flatten().tolist() == mask


def test_jsonl_corpus_masks_exactly_the_prompt_bytes(tmp_path, tok):
    rows = [{"prompt": "P" * (i % 7 + 1), "response": "r" * (i % 5 + 2)} for i in range(80)]
    path = write_jsonl(tmp_path / "sft.jsonl", rows)
    splits = build_splits(jsonl_cfg([path], block_size=16, val_fraction=0.2), tok)
    p_id, r_id = byte_ids("P")[0], byte_ids("r")[0]
    for part in (splits.train, splits.val):
        assert len(part) > 0
        assert torch.all(part.mask[part.ids == p_id] == False)
        assert torch.all(part.mask[part.ids == r_id])  # every response byte is a loss token
        assert torch.all(part.mask[part.ids == tok.eos_token_id])  # the end of a response is learned too


def test_jsonl_field_names_are_configurable(tmp_path, tok):
    rows = [{"instruction": "I" * 4, "output": "o" * 6} for _ in range(3)]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    docs = list(iter_documents(jsonl_cfg([path], prompt_field="instruction", response_field="output")))
    assert [(d.prompt, d.text) for d in docs] == [("IIII", "oooooo")] * 3
    with pytest.raises(UserError) as err:
        list(iter_documents(jsonl_cfg([path])))
    assert f"{path}:1" in str(err.value) and "'prompt'" in str(err.value)


def test_build_splits_block_shapes(tmp_path, tok):
    corpus = write_corpus(tmp_path / "corpus", n_files=30)
    cfg = DatasetConfig(name="text", kind="text", paths=[f"{corpus}/*.txt"], block_size=24, val_fraction=0.3,
                        max_train_tokens=2400, max_val_tokens=480)
    splits = build_splits(cfg, tok)
    assert splits.train.ids.shape == (100, 24) and splits.train.mask.shape == (100, 24)
    assert splits.val.ids.shape == (20, 24)
    assert int(splits.train.ids.max()) < len(tok)


# ------------------------------------------------------------------------------------------ cache


def test_cache_hit_returns_identical_tensors_without_reading_the_corpus(tmp_path, tok, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus", n_files=30)
    cfg = DatasetConfig(name="text", kind="text", paths=[f"{corpus}/*.txt"], block_size=16, val_fraction=0.3)
    cache = tmp_path / "cache"
    first = build_splits(cfg, tok, cache)
    files = list((cache / "data").glob("text-*.pt"))
    assert len(files) == 1

    def no_reading(_cfg):
        raise AssertionError("a cache hit must not tokenise the corpus again")

    monkeypatch.setattr(packing, "iter_documents", no_reading)
    second = build_splits(cfg, tok, cache)
    for a, b in ((first.train.ids, second.train.ids), (first.train.mask, second.train.mask),
                 (first.val.ids, second.val.ids), (first.val.mask, second.val.mask)):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_cache_is_invalidated_by_a_changed_file_or_setting(tmp_path, tok):
    corpus = write_corpus(tmp_path / "corpus", n_files=30)
    cfg = DatasetConfig(name="text", kind="text", paths=[f"{corpus}/*.txt"], block_size=16, val_fraction=0.3)
    cache = tmp_path / "cache"
    build_splits(cfg, tok, cache)
    other_block = DatasetConfig(**{**cfg.__dict__, "block_size": 8})
    assert build_splits(other_block, tok, cache).train.ids.shape[1] == 8
    assert len(list((cache / "data").glob("*.pt"))) == 2
    (corpus / "doc000.txt").write_text("a completely different document " * 20)
    build_splits(cfg, tok, cache)
    assert len(list((cache / "data").glob("*.pt"))) == 3
    # a different tokenizer is a different cache entry too
    tok2 = byte_tokenizer()
    tok2.add_tokens(["<|extra|>"])
    build_splits(cfg, tok2, cache)
    assert len(list((cache / "data").glob("*.pt"))) == 4


# ------------------------------------------------------------------------------------------ text bytes


def test_added_bytes_tile_the_text():
    """Each token adds the bytes past what earlier tokens cover: a character split over two tokens counts once,
    uncovered text counts on the next token (and at the end on the last), zero-width tokens add 0."""
    from egad_cli.data.text_bytes import added_bytes

    text = "a é  b"  # é is 2 bytes: 7 bytes in all
    # "a" | " é" split over two tokens with the same span | zero-width | "b" (the two spaces before it uncovered)
    offsets = [(0, 1), (1, 3), (2, 3), (3, 3), (5, 6)]
    assert added_bytes(text, offsets).tolist() == [1, 3, 0, 0, 3]
    assert added_bytes(text, offsets[:2]).tolist() == [1, 6]  # the uncovered rest goes to the last token
    assert added_bytes("", []).tolist() == []


@pytest.mark.parametrize("style", ["normalizer", "metaspace"])
def test_bits_per_byte_count_the_texts_own_bytes_for_a_sentencepiece_tokenizer(style):
    """A SentencePiece tokenizer's first piece of a text ("▁The") spells a space the text lacks: what each id
    spells alone over-counts the text; the packed text_bytes, which eval divides by, count exactly its bytes."""
    from test_alignment import sentencepiece_tokenizer

    from egad_cli.evaluation.cross import target_bytes
    from egad_cli.models.token_bytes import byte_lengths

    tok = sentencepiece_tokenizer(style)
    # words of its training sentences: no byte-fallback piece, which this stand-in marks special (spells nothing)
    docs = [Document("a", "the cat sat"), Document("b", "the dog sat on the log"), Document("c", "the mat",
                                                                                             prompt="on the")]
    n_tokens = len(pack(docs, tok, block_size=1, max_tokens=10_000))
    packed = pack(docs, tok, block_size=n_tokens, max_tokens=10_000)  # every token in one block, nothing cut
    n_text = sum(len((d.prompt + d.text).encode()) for d in docs)
    assert int(packed.extra["text_bytes"].sum()) == n_text
    spelled = int(byte_lengths(tok)[packed.ids].sum())
    assert spelled == n_text + 4  # one dummy-prefix space per tokenised part (3 texts, 1 prompt)
    # eval's rows: every loss target after the first position
    valid = packed.mask[:, 1:]
    metrics = {"block": torch.zeros(int(valid.sum()), dtype=torch.long),
               "position": valid[0].nonzero().squeeze(1), "target": packed.ids[:, 1:][valid]}
    want = packed.extra["text_bytes"][:, 1:][valid]
    assert torch.equal(target_bytes(packed, metrics, tok), want.long())
    # the texts' bytes (the prompt's are not targets), less the first token's
    first = int(packed.extra["text_bytes"][0, 0])
    assert int(want.sum()) == sum(len(d.text.encode()) for d in docs) - first


def test_a_slow_tokenizer_packs_without_text_bytes_and_eval_counts_what_ids_spell(tok):
    from egad_cli.evaluation.cross import target_bytes
    from egad_cli.models.token_bytes import byte_lengths

    class Slow:  # a tokenizer without offsets (is_fast False): the per-id lengths are the fallback
        is_fast = False

        def __init__(self, inner):
            self.inner, self.eos_token_id = inner, inner.eos_token_id

        def __call__(self, texts, **kw):
            assert not kw.get("return_offsets_mapping")
            return self.inner(texts, add_special_tokens=False)

    packed = pack([Document("a", "hello world")], Slow(tok), block_size=4, max_tokens=100)
    assert "text_bytes" not in packed.extra
    metrics = {"block": torch.tensor([0, 1]), "position": torch.tensor([0, 2]), "target": packed.ids[[0, 1], [1, 3]]}
    assert torch.equal(target_bytes(packed, metrics, tok), byte_lengths(tok)[metrics["target"]])


def test_cache_is_keyed_by_the_whole_tokenizer_not_only_its_vocabulary(tmp_path, tok):
    """A changed normalizer (or pre-tokenizer) with the same vocabulary and EOS tokenises the same text
    differently: it must not reuse the old blocks (nor, across tokenizers, the old alignment)."""
    from tokenizers import normalizers

    corpus = write_corpus(tmp_path / "corpus", n_files=30)
    cfg = DatasetConfig(name="text", kind="text", paths=[f"{corpus}/*.txt"], block_size=16, val_fraction=0.3)
    cache = tmp_path / "cache"
    build_splits(cfg, tok, cache)
    assert packing.cache_key(cfg, byte_tokenizer()) == packing.cache_key(cfg, tok)  # the same definition, reloaded
    lower = byte_tokenizer()
    lower.backend_tokenizer.normalizer = normalizers.Lowercase()
    assert lower.get_vocab() == tok.get_vocab() and lower.eos_token_id == tok.eos_token_id
    assert packing.cache_key(cfg, lower) != packing.cache_key(cfg, tok)
    assert packing.cache_key(cfg, tok, lower) != packing.cache_key(cfg, tok, byte_tokenizer())
    build_splits(cfg, lower, cache)
    assert len(list((cache / "data").glob("*.pt"))) == 2
