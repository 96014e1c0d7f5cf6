"""`make study`'s command sequence (bench/study.py) end to end on debug=smoke: three corpora (prose from a hand-made
MediaWiki dump, dialogue from hand-made conversations), per corpus cache → runs → live twin → eval → report, the
sensitivity point, the decision, the longer point, and a second invocation that goes on from the stages already
done instead of redoing them."""

from __future__ import annotations

import bz2
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

STUDY = Path(__file__).resolve().parents[2] / "bench" / "study.py"


def wiki_dump(path: Path, articles: int = 20) -> Path:
    rng = random.Random(0)
    words = ["the", "of", "and", "a", "to", "in", "is", "was", "that", "for", "on", "as", "with", "by", "he", "it",
             "at", "from", "his", "an", "were", "are", "which", "this"]
    pages = "".join(f"<page><title>Article {i}</title><ns>0</ns><revision><text>"
                    f"'''Article {i}''' {' '.join(rng.choice(words) for _ in range(400))}.</text></revision></page>"
                    for i in range(articles))
    path.write_bytes(bz2.compress(f"<mediawiki>{pages}</mediawiki>".encode()))
    return path

def chat_source(path: Path, conversations: int = 60) -> Path:
    """Conversations in chitchat-dataset's format (groups of messages, each group one sender's)."""
    rng = random.Random(1)
    words = ["hi", "yes", "no", "maybe", "what", "do", "you", "think", "about", "the", "game", "today", "lol", "sure"]
    chats = {}
    for c in range(conversations):
        groups = [[{"text": " ".join(rng.choice(words) for _ in range(12)), "timestamp": "2018-04-19T19:57:51",
                    "sender": "ab"[g % 2]}] for g in range(6)]
        chats[f"c{c:03d}"] = {"prompt": "hello", "start": "2018-04-20T01:57:41", "messages": groups}
    path.write_text(json.dumps(chats))
    return path


@pytest.mark.slow
def test_the_study_runs_end_to_end_on_smoke_and_resumes_by_stage(tmp_path):
    out = tmp_path / "study"
    argv = [sys.executable, str(STUDY), "--smoke", "--out", str(out), "--prose-dump", str(wiki_dump(tmp_path / "d.bz2")),
            "--prose-min-chars", "100", "--dialogue-source", str(chat_source(tmp_path / "chat.json")),
            "--methods", "kd,egad", "--seeds", "0,1", "--live", "kd", "--knobs", "branch.q=0.15",
            "--sensitivity-seeds", "1", "--long-seeds", "0"]
    first = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    state = json.loads((out / "study.json").read_text())
    per_corpus = ["cache", "runs", "live", "eval", "report"]
    stages = ([f"embedded/{s}" for s in per_corpus[:3]] + ["embedded/sensitivity", "embedded/eval", "embedded/report"]
              + ["prose-corpus"] + [f"enwiki/{s}" for s in per_corpus]
              + ["dialogue-corpus"] + [f"dialogue/{s}" for s in per_corpus]
              + ["long/cache", "long/runs", "long/eval", "long/report"])
    assert list(state["stages"]) == stages
    assert all(s["problem"] is None and s["seconds"] >= 0 for s in state["stages"].values())
    # per corpus 2 methods × 2 seeds + 1 live twin (embedded: + 1 sensitivity point); the longer point: kd and egad
    # (the rule's pick is one of them) on one seed; every one finished and evaluated
    assert state["counts"] == {"embedded": {"planned": 6, "finished": 6, "evaluated": 6},
                               "enwiki": {"planned": 5, "finished": 5, "evaluated": 5},
                               "dialogue": {"planned": 5, "finished": 5, "evaluated": 5},
                               "long": {"planned": 2, "finished": 2, "evaluated": 2}}
    assert len(list((out / "data" / "enwiki").glob("*.txt"))) == 20
    assert (out / "data" / "dialogue" / "train.jsonl").is_file()
    for corpus in ("embedded", "enwiki", "dialogue", "long"):
        report = (out / corpus / "runs" / "report.md").read_text()
        assert "method" in report and (out / corpus / "runs" / "report-plots.json").is_file()
        assert {json.loads((p / "summary.json").read_text())["method"]
                for p in (out / corpus / "runs").iterdir() if (p / "summary.json").is_file()} == {"kd", "egad"}

    # the live twins: one per corpus, each beside its cache-trained run
    assert [(r["corpus"], r["method"], r["seed"]) for r in state["crosscheck"]] == [
        ("embedded", "kd", "0"), ("enwiki", "kd", "0"), ("dialogue", "kd", "0")]
    for row in state["crosscheck"]:
        assert row["relative"] == pytest.approx(row["cache"] / row["live"] - 1)
    # the runs from a cache are evaluated against it (no teacher pass), each live twin with the live teacher
    for corpus in ("embedded", "enwiki", "dialogue"):
        runs = [p for p in (out / corpus / "runs").iterdir() if (p / "summary.json").is_file()]
        assert runs
        for p in runs:
            setup = json.loads((p / "eval.json").read_text())["setup"]
            assert setup["teacher_cache"] == str(out / corpus / "teacher-cache"), p
        twin = json.loads((out / corpus / "live" / "method:kd__trainer.seed:0" / "eval.json").read_text())
        assert twin["setup"]["teacher_cache"] is None
    # the decision, recomputed from the runs' eval.json: ranks by mean, eligibility from the paired interval
    decision = state["decision"]
    assert set(decision["arms"]) == {"kd", "egad"} and decision["complete"]
    for corpus in ("embedded", "enwiki", "dialogue"):
        kl = {m: {} for m in ("kd", "egad")}
        for p in (out / corpus / "runs").iterdir():
            if (p / "eval.json").is_file():
                method, seed = p.name.split("__")[0].split(":")[1], p.name.split(":")[-1]
                kl[method][seed] = json.loads((p / "eval.json").read_text())["kl_forward"]
        means = {m: sum(v.values()) / 2 for m, v in kl.items()}
        cell = decision["arms"]["egad"]["corpora"][corpus]
        assert cell["mean"] == pytest.approx(means["egad"])
        assert cell["rank"] == (1 if means["egad"] < means["kd"] else 2)
        diffs = [kl["egad"][s] - kl["kd"][s] for s in ("0", "1")]
        assert cell["vs_kd"]["mean"] == pytest.approx(sum(diffs) / 2)
        worse = cell["vs_kd"]["low"] > 0
        assert (corpus in decision["arms"]["egad"]["worse_than_kd_on"]) == worse
    assert decision["default"] in ("kd", "egad") and decision["arms"]["kd"]["eligible"]
    (point,) = state["sensitivity"]
    assert point["knob"] == "branch.q" and point["value"] == "0.15" and "(n=1)" in point["vs_default"]
    study_md = (out / "study.md").read_text()
    assert "Live twins" in study_md and "| branch.q | 0.15 |" in study_md and "Default by the rule" in study_md
    assert "Longer point" in study_md

    second = subprocess.run(argv, capture_output=True, text=True, check=False)  # everything done: nothing rerun
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("done before, skipped") == len(stages) and "$ egad" not in second.stdout
    assert json.loads((out / "study.json").read_text())["counts"] == state["counts"]

    # a run cut off before it finished (no summary, and its checkpoints gone): the stage goes on from there,
    # retrains just that run (the cut-off attempt set aside, not deleted) and evaluates just it
    cut = out / "embedded" / "runs" / "method:egad__trainer.seed:0"
    for name in ("summary.json", "eval.json"):
        (cut / name).unlink()
    for stage in ("embedded/runs", "embedded/eval", "embedded/report"):
        (out / ".done" / stage).unlink()
    third = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert third.stdout.count("$ egad distill") == 1 and f"hydra.run.dir={cut}" in third.stdout
    assert third.stdout.count("$ egad eval") == 1 and third.stdout.count(str(cut)) >= 2
    assert len(list((out / ".attempts" / "embedded" / "runs").iterdir())) == 1
    assert json.loads((out / "study.json").read_text())["counts"] == state["counts"]

    other = subprocess.run([*argv, "--seeds", "0"], capture_output=True, text=True, check=False)
    assert other.returncode != 0 and "other settings (seeds" in other.stderr and "--out" in other.stderr


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    for bad, message in ((["--corpora", "embedded,fortunes"], "unknown"), (["--knobs", "branch.q"], "key=v1"),
                         (["--steps", "0"], "--steps"), (["--methods", "kd,egda"], "no method preset ['egda']"),
                         (["--live", "kdd"], "--live"), (["--seeds", "0,one"], "--seeds"),
                         (["--methods", "egad"], "paired against kd"),
                         (["--methods", "kd", "--knobs", "branch.q=0.1"], "keep egad in --methods"),
                         (["--long-corpus", "dialogue", "--corpora", "embedded"], "not among --corpora")):
        done = subprocess.run([sys.executable, str(STUDY), "--out", str(tmp_path / "s"), *bad],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "s").exists()


def test_a_knob_that_does_not_compose_is_refused_before_any_work(tmp_path):
    done = subprocess.run([sys.executable, str(STUDY), "--out", str(tmp_path / "s"), "--knobs", "branch.qq=0.1"],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode != 0 and "--knobs branch.qq=0.1 does not compose" in done.stderr
    assert not (tmp_path / "s").exists()
