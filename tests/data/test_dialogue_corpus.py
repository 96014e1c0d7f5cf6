"""bench/dialogue_corpus.py (the study's third corpus): chit-chat conversations cut into prompt/response records,
on hand-made files in chitchat-dataset's format (the real file needs the package, which the tests do not install)."""

from __future__ import annotations

import importlib.util
import json
import sys
from importlib import metadata
from pathlib import Path

import pytest
from conftest import egad, read_jsonl

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def dialogue():
    spec = importlib.util.spec_from_file_location("dialogue_corpus", BENCH / "dialogue_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while it is defined
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def convo(*turns: tuple[str, list[str]], prompt: str | None = "What's new?") -> dict:
    """A conversation in the package's format: groups of messages, each group one sender's."""
    return {"prompt": prompt, "start": "2018-04-20T01:57:41",
            "messages": [[{"text": t, "timestamp": "2018-04-19T19:57:51", "sender": s} for t in texts]
                         for s, texts in turns]}


def write_source(path: Path, conversations: dict) -> Path:
    path.write_text(json.dumps(conversations))
    return path


def test_a_conversation_becomes_one_record_per_reply(dialogue):
    records = list(dialogue.conversation_records(convo(
        ("u1", ["Hello", "  How are\tyou doing today? "]),
        ("u2", ["whats up", ""]),  # an empty message is dropped
        ("u2", ["im good"]),  # the same sender again: one turn
        ("u1", ["Nice to hear"]))))
    assert records == [
        {"prompt": "A: Hello\nHow are you doing today?\nB:", "response": " whats up\nim good"},
        {"prompt": "A: Hello\nHow are you doing today?\nB: whats up\nim good\nA:", "response": " Nice to hear"},
    ]


def test_nobody_answered_gives_no_record(dialogue):
    assert list(dialogue.conversation_records(convo(("u1", ["hi there", "are you there?"])))) == []
    assert list(dialogue.conversation_records(convo())) == []


def test_a_prompt_keeps_the_last_turns_within_the_character_budget(dialogue, monkeypatch):
    monkeypatch.setattr(dialogue, "CONTEXT_TURNS", 3)
    monkeypatch.setattr(dialogue, "CONTEXT_CHARS", 20)
    records = list(dialogue.conversation_records(convo(
        ("a", ["t1"]), ("b", ["t2"]), ("a", ["t3"]), ("b", ["t4"]), ("a", ["x" * 15]), ("b", ["y" * 30]),
        ("a", ["t7"]))))
    assert [r["prompt"] for r in records] == [
        "A: t1\nB:",
        "A: t1\nB: t2\nA:",
        "A: t1\nB: t2\nA: t3\nB:",  # three turns at most
        "B: t2\nA: t3\nB: t4\nA:",
        "A: t3\nB: t4\nA: " + "x" * 15 + "\nB:",  # 19 characters of context: the 20-character budget holds
        "B: " + "y" * 30 + "\nA:",  # the latest turn stays, however long; nothing older fits beside it
    ]
    assert [r["response"] for r in records] == [" t2", " t3", " t4", " " + "x" * 15, " " + "y" * 30, " t7"]


def test_an_over_long_turn_cuts_the_conversation(dialogue, monkeypatch):
    monkeypatch.setattr(dialogue, "MAX_TURN_CHARS", 10)
    records = list(dialogue.conversation_records(convo(
        ("a", ["hi"]), ("b", ["hello"]), ("a", ["pasted " * 5]), ("b", ["wow"]), ("a", ["yes"]))))
    assert records == [{"prompt": "A: hi\nB:", "response": " hello"},  # no record answers the pasted turn,
                       {"prompt": "B: wow\nA:", "response": " yes"}]  # and no prompt reaches across it


MALFORMED = {
    "m1": ["not", "an", "object"],
    "m2": {"prompt": "x"},
    "m3": {"messages": [[{"text": 3, "sender": "a"}]]},
    "m4": {"messages": [{"text": "hi", "sender": "a"}]},
    "m5": convo(("a", ["hi"]), ("b", ["yo"]), ("c", ["hey"])),
}


def test_the_command_writes_all_records_in_id_order_and_reports_malformed_conversations(dialogue, tmp_path, capsys):
    good = {"b-second": convo(("p", ["naïve café 😀"]), ("q", ["ok"])),
            "a-first": convo(("x", ["one"]), ("y", ["two"]), ("x", ["three"])),
            "c-silent": convo(("z", ["anyone?"]))}
    source = write_source(tmp_path / "dataset.json", {**MALFORMED, **good})
    dialogue.main([str(tmp_path / "out"), "--source", str(source)])
    err = capsys.readouterr().err
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert rows == [{"prompt": "A: one\nB:", "response": " two"}, {"prompt": "A: one\nB: two\nA:", "response": " three"},
                    {"prompt": "A: naïve café 😀\nB:", "response": " ok"}]
    assert (tmp_path / "out" / "train.jsonl").read_bytes().isascii()  # escaped: no raw line separators
    assert "3 records from 2 of 3 conversations" in err and "5 more skipped as malformed" in err
    for line in ("m1: is list, not an object", "m2: has no 'messages' list", "m3: has a message without a string",
                 "m4: has a message group that is dict, not a list", "m5: has 3 senders, not two"):
        assert f"skipped conversation {line}" in err
    # the same conversations in another order: the same file
    write_source(source, dict(reversed(list({**good, **MALFORMED}.items()))))
    dialogue.main([str(tmp_path / "again"), "--source", str(source)])
    assert (tmp_path / "again" / "train.jsonl").read_bytes() == (tmp_path / "out" / "train.jsonl").read_bytes()


def test_the_command_refuses_bad_sources_and_a_filled_dir(dialogue, tmp_path):
    source = write_source(tmp_path / "ok.json", {"c": convo(("a", ["hi"]), ("b", ["yo"]))})
    dialogue.main([str(tmp_path / "out"), "--source", str(source)])
    with pytest.raises(SystemExit, match="exists: remove it"):
        dialogue.main([str(tmp_path / "out"), "--source", str(source)])
    (tmp_path / "cut.json").write_text('{"c": {"messages": [')
    for bad, why in ((tmp_path / "missing.json", "not a readable JSON file"),
                     (tmp_path / "cut.json", "not a readable JSON file"),
                     (write_source(tmp_path / "list.json", [convo()]), "not a JSON object of conversations"),
                     (write_source(tmp_path / "silent.json", {"c": convo(("a", ["hi?"]))}), "no record written")):
        with pytest.raises(SystemExit, match=why):
            dialogue.main([str(tmp_path / bad.stem), "--source", str(bad)])
    assert not (tmp_path / "silent" / "train.jsonl").exists()


def test_without_the_package_the_error_says_what_to_install(dialogue, monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)  # what bench/wheel_data.py asks
    with pytest.raises(SystemExit, match=r"pip install --no-deps chitchat-dataset==0\.9\.0"):
        dialogue.installed_source()


def test_egad_distills_on_the_written_file(dialogue, tmp_path):
    """The produced file as `dataset=jsonl` data: egad reads it, splits it and trains (debug=smoke)."""
    words = ("sure", "maybe later", "i like hiking", "what about you?", "haha yes", "no way", "tell me more")
    conversations = {f"c{i:03d}": convo(*[("ab"[t % 2], [words[(i + t) % len(words)], f"turn {t}"])
                                          for t in range(8)]) for i in range(60)}
    source = write_source(tmp_path / "dataset.json", conversations)
    dialogue.main([str(tmp_path / "data"), "--source", str(source)])
    run = tmp_path / "run"
    assert egad("distill", "debug=smoke", f"hydra.run.dir={run}", "dataset=jsonl",
                f"dataset.paths=[{tmp_path / 'data' / 'train.jsonl'}]", f"cache_dir={tmp_path / 'cache'}") == 0
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
