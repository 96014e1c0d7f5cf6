"""student.tokenizer=<path>: a bare tokenizer.json keeps the end-of-text token it has (found among its special
tokens); only a file without one gets <|endoftext|> added, and the console says so. A tokenizer directory keeps
the EOS of its tokenizer_config.json."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from egad_cli.config.schema import DatasetConfig, StudentConfig
from egad_cli.models.student_tokenizer import student_tokenizer

WORDS = ["hello", "world", "def", "return", "x", "y"]


class Recorder:
    """Stands in for the rich console: keeps what was printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, *objects, **_kwargs) -> None:
        self.lines.append(" ".join(map(str, objects)))


def write_tokenizer_json(path: Path, specials: list[str], template: str | None = None) -> Tokenizer:
    """A word-level tokenizer.json with ``specials`` as special added tokens and an optional single-sequence
    post-processor template (``"<s> $A"``)."""
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    if template is not None:
        used = [t for t in template.split() if t != "$A"]
        tok.post_processor = processors.TemplateProcessing(single=template,
                                                           special_tokens=[(t, tok.token_to_id(t)) for t in used])
    tok.save(str(path))
    return tok


def load(path: Path, console=None):
    return student_tokenizer(StudentConfig(tokenizer=str(path)), DatasetConfig(), path.parent / "cache", console)


def test_a_tokenizer_json_keeps_its_own_eos(tmp_path):
    path = tmp_path / "tokenizer.json"
    raw = write_tokenizer_json(path, ["<s>", "</s>", "<pad>"], template="<s> $A")
    console = Recorder()
    tok = load(path, console)
    assert tok.eos_token == "</s>" and tok.eos_token_id == raw.token_to_id("</s>")
    assert len(tok) == raw.get_vocab_size(with_added_tokens=True)  # nothing added
    assert "<|endoftext|>" not in tok.get_vocab()
    assert console.lines == []


@pytest.mark.parametrize(("specials", "eos"), [
    (["<|im_start|>", "<|im_end|>", "<|endoftext|>"], "<|endoftext|>"),  # Qwen: the end of a document wins over
    (["<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"], "<|end_of_text|>"),  # the end of a chat turn
    (["<bos>", "<eos>", "<pad>"], "<eos>"),
    (["<|user|>", "<|end|>"], "<|end|>"),
])
def test_several_candidates_resolve_in_the_documented_order(tmp_path, specials, eos):
    path = tmp_path / "tokenizer.json"
    raw = write_tokenizer_json(path, specials)
    tok = load(path)
    assert tok.eos_token == eos and len(tok) == raw.get_vocab_size(with_added_tokens=True)


def test_an_unconventional_eos_appended_by_the_template_is_taken(tmp_path):
    path = tmp_path / "tokenizer.json"
    raw = write_tokenizer_json(path, ["[START]", "[STOP]"], template="[START] $A [STOP]")
    tok = load(path)
    assert tok.eos_token == "[STOP]" and len(tok) == raw.get_vocab_size(with_added_tokens=True)


def test_a_tokenizer_json_without_an_eos_gets_one_added_and_says_so(tmp_path):
    path = tmp_path / "tokenizer.json"
    raw = write_tokenizer_json(path, [])
    console = Recorder()
    tok = load(path, console)
    assert tok.eos_token == "<|endoftext|>"
    assert len(tok) == raw.get_vocab_size(with_added_tokens=True) + 1
    said = " ".join(console.lines)
    assert "<|endoftext|>" in said and "tokenizer.json" in said and "no end-of-text token" in said


def test_a_tokenizer_json_without_an_eos_warns_without_a_console(tmp_path):
    path = tmp_path / "tokenizer.json"
    write_tokenizer_json(path, ["<pad>"])
    with pytest.warns(UserWarning, match="no end-of-text token"):
        tok = load(path)
    assert tok.eos_token == "<|endoftext|>"


def test_a_tokenizer_directory_keeps_its_eos(tmp_path):
    from transformers import PreTrainedTokenizerFast

    raw = write_tokenizer_json(tmp_path / "tokenizer.json", ["<|im_end|>", "<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>").save_pretrained(str(tmp_path / "dir"))
    tok = load(tmp_path / "dir")
    assert tok.eos_token == "<|im_end|>"  # its tokenizer_config.json says so: no inference
