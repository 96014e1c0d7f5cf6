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
