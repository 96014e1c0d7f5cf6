"""The study's third corpus: English chit-chat dialogue as prompt/response JSON lines, from a package on PyPI.

    pip install --no-deps chitchat-dataset==0.9.0    # only a data file of the wheel is read
    python bench/dialogue_corpus.py data/dialogue       # writes data/dialogue/train.jsonl
    egad distill dataset=jsonl 'dataset.paths=[data/dialogue/train.jsonl]'

The other corpora are plain text (every token a loss token); this one is prompt/response data, where the loss
counts the response tokens only. The wheel of chitchat-dataset 0.9.0 (MIT licence, BYU Perception, Control and
Cognition lab's "Chit-Chat Challenge", 2018) carries ``chitchat_dataset/dataset.json`` (40 MB): 7,168 typed
conversations between two people, 258,145 messages, 12.6 M characters of casual English (typos, slang
and all).
3,150 of them are one person waiting for a reply that never came; 4,002 give 131,224 records (a 45 MB file):
2.81 M SmolLM2 tokens of responses (11.5 M characters, 21 tokens a response on average) after prompts of 61
tokens on average, so ~27 % of the packed tokens (EOS included) are loss tokens. The file is read from the
installed distribution's file list; the package is never imported (no code that came with the data runs), so
``--no-deps`` is enough.

Conversion, per conversation (in the order of their ids, so the output does not depend on the file's order):
each message's whitespace is collapsed and empty messages are dropped; consecutive messages of one sender make
a turn (its messages one per line); the first sender is ``A``, the other ``B``. Each turn after the first is a
record: the response is the turn (after a space), the prompt the conversation so far as a transcript (``A: …``
/ ``B: …`` lines) ending in the responder's label. The prompt keeps the last CONTEXT_TURNS turns at most, and
drops older ones past CONTEXT_CHARS characters (the latest turn always stays): a record is about one 128-token
block, and a prompt about as long as an on-policy prompt (64 tokens). A turn over MAX_TURN_CHARS characters
(pasted text, filler, monologues) is no record and cuts the conversation: no prompt reaches across it. A
conversation of more than two senders, or whose JSON is not the package's format, is skipped and reported.

Records of one conversation share text: a turn is one record's response and the next records' prompt. egad
splits jsonl data by record (the hash of its line), so a held-out response can be a training record's prompt;
prompts carry no loss, so no run is trained to predict a held-out token, but the held-out split is not
conversation-disjoint. Tested on hand-made conversations (tests/data/test_dialogue_corpus.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for its helpers when run as a script
from wheel_data import wheel_file

DIST = "chitchat-dataset"
SPEC = "chitchat-dataset==0.9.0"
DATA_FILE = "chitchat_dataset/dataset.json"
LICENSE = "MIT"
OUT_FILE = "train.jsonl"
SPEAKERS = ("A", "B")  #: labels of the first and the second sender
CONTEXT_TURNS = 3  #: turns of conversation a prompt keeps at most
CONTEXT_CHARS = 400  #: older turns are dropped from a prompt past this many characters (the latest stays)
MAX_TURN_CHARS = 1000  #: a longer turn is no record and cuts the conversation


def installed_source() -> Path:
    """The conversations file inside the installed chitchat-dataset distribution (not imported)."""
    return wheel_file(DIST, DATA_FILE, SPEC, "dialogue corpus", "--source FILE")


class Malformed(ValueError):
    """A conversation that is not in the package's format."""


def turns(conversation: object) -> list[tuple[str, str]]:
    """(sender, text) of each turn: consecutive non-empty messages of one sender, one per line."""
    if not isinstance(conversation, Mapping):
        raise Malformed(f"is {type(conversation).__name__}, not an object")
    messages = conversation.get("messages")
    if not isinstance(messages, list):
        raise Malformed("has no 'messages' list")
    out: list[tuple[str, list[str]]] = []
    for group in messages:  # a group is one sender's messages: regrouped by sender all the same
        if not isinstance(group, list):
            raise Malformed(f"has a message group that is {type(group).__name__}, not a list")
        for message in group:
            if not isinstance(message, Mapping) or not isinstance(message.get("text"), str) \
                    or not isinstance(message.get("sender"), str):
                raise Malformed(f"has a message without a string 'text' and 'sender': "
                                f"{json.dumps(message)[:80]}")
            text = " ".join(message["text"].split())
            if not text:
                continue
            if out and out[-1][0] == message["sender"]:
                out[-1][1].append(text)
            else:
                out.append((message["sender"], [text]))
    senders = list(dict.fromkeys(s for s, _ in out))
    if len(senders) > 2:
        raise Malformed(f"has {len(senders)} senders, not two")
    return [(sender, "\n".join(lines)) for sender, lines in out]


def prompt_of(context: list[tuple[str, str]], responder: str) -> str:
    """The transcript of the context turns, ending in the responder's label."""
    return "".join(f"{label}: {text}\n" for label, text in context) + f"{responder}:"


def conversation_records(conversation: object) -> Iterator[dict[str, str]]:
    """The records of one conversation (rules in the module docstring); Malformed if not in the format."""
    labelled = turns(conversation)
    labels = {s: SPEAKERS[i] for i, s in enumerate(dict.fromkeys(s for s, _ in labelled))}
    history: list[tuple[str, str]] = []  # (label, text) since the last cut
    for sender, text in labelled:
        if len(text) > MAX_TURN_CHARS:
            history = []
            continue
        if history:
            context = [history[-1]]
            for turn in reversed(history[:-1]):
                chars = sum(len(t) for _, t in context) + len(turn[1])
                if len(context) >= CONTEXT_TURNS or chars > CONTEXT_CHARS:
                    break
                context.insert(0, turn)
            yield {"prompt": prompt_of(context, labels[sender]), "response": " " + text}
        history.append((labels[sender], text))


@dataclass
class Counts:
    conversations: int = 0  #: well-formed ones
    replied: int = 0  #: those that gave a record (someone answered)
    records: int = 0
    prompt_chars: int = 0
    response_chars: int = 0
    skipped: list[str] = field(default_factory=list)  #: "<id>: <why>" of each skipped conversation


def write_records(conversations: Mapping[str, object], out_file: Path) -> Counts:
    """Every record of every conversation, in the order of the conversation ids, one JSON object a line."""
    counts = Counts()
    with open(out_file, "w", encoding="utf-8") as f:
        for key in sorted(conversations):
            try:
                records = list(conversation_records(conversations[key]))
            except Malformed as exc:
                counts.skipped.append(f"{key}: {exc}")
                continue
            counts.conversations += 1
            counts.replied += bool(records)
            for record in records:
                # ASCII escapes: no raw U+2028, U+0085 …, which str.splitlines (egad's reader) takes as line ends
                f.write(json.dumps(record, ensure_ascii=True) + "\n")
                counts.records += 1
                counts.prompt_chars += len(record["prompt"])
                counts.response_chars += len(record["response"])
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help=f"directory for {OUT_FILE} (created)")
    ap.add_argument("--source", type=Path, default=None, help=f"a conversations file in the format of "
                    f"{DATA_FILE} instead of the installed package's")
    args = ap.parse_args(argv)
    out_file = args.out / OUT_FILE
    if out_file.exists():
        raise SystemExit(f"error: {out_file} exists: remove it or choose another directory")
    source = args.source or installed_source()
    try:
        conversations = json.loads(source.read_bytes())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {source}: not a readable JSON file: {exc}") from None
    if not isinstance(conversations, Mapping):
        raise SystemExit(f"error: {source}: not a JSON object of conversations by id "
                         f"(the format of {DATA_FILE})")
    args.out.mkdir(parents=True, exist_ok=True)
    counts = write_records(conversations, out_file)
    for line in counts.skipped[:10]:
        print(f"skipped conversation {line}", file=sys.stderr)
    if len(counts.skipped) > 10:
        print(f"… and {len(counts.skipped) - 10} more", file=sys.stderr)
    if not counts.records:
        out_file.unlink()
        raise SystemExit(f"error: no conversation of {source} has a reply: no record written")
    print(f"{counts.records} records from {counts.replied} of {counts.conversations} conversations "
          f"(the others: no reply, or only over-long turns; {len(counts.skipped)} more skipped as malformed); "
          f"responses "
          f"{counts.response_chars / 1e6:.2f} M characters (~{counts.response_chars / 4e6:.2f} M tokens at 4 "
          f"characters a token), prompts {counts.prompt_chars / 1e6:.2f} M characters -> {out_file}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
