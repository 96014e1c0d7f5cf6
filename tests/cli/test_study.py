"""`make study`'s command sequence (bench/study.py) end to end on debug=smoke: both corpora (the prose one from a
hand-made MediaWiki dump), cache → runs → live cross-check → sensitivity → eval → report, and a second
invocation that goes on from the stages already done instead of redoing them."""

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


@pytest.mark.slow
def test_the_study_runs_end_to_end_on_smoke_and_resumes_by_stage(tmp_path):
    out = tmp_path / "study"
    argv = [sys.executable, str(STUDY), "--smoke", "--out", str(out), "--prose-dump", str(wiki_dump(tmp_path / "d.bz2")),
            "--prose-min-chars", "100", "--methods", "kd,egad", "--seeds", "0", "--live", "kd",
            "--knobs", "branch.q=0.15", "--sensitivity-seeds", "1"]
    first = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    state = json.loads((out / "study.json").read_text())
    stages = ["prose-corpus", "embedded/cache", "embedded/runs", "enwiki/cache", "enwiki/runs", "embedded/live",
              "embedded/sensitivity", "embedded/eval", "embedded/report", "enwiki/eval", "enwiki/report"]
    assert list(state["stages"]) == stages
    assert all(s["problem"] is None and s["seconds"] >= 0 for s in state["stages"].values())
    # embedded: 2 methods + 1 live + 1 sensitivity point; enwiki: 2 methods; every one finished and evaluated
    assert state["counts"] == {"embedded": {"planned": 4, "finished": 4, "evaluated": 4},
                               "enwiki": {"planned": 2, "finished": 2, "evaluated": 2}}
    assert len(list((out / "data" / "enwiki").glob("*.txt"))) == 20
    for corpus in ("embedded", "enwiki"):
        report = (out / corpus / "runs" / "report.md").read_text()
        assert "method" in report and (out / corpus / "runs" / "report-plots.json").is_file()
        assert {json.loads((p / "summary.json").read_text())["method"]
                for p in (out / corpus / "runs").iterdir() if (p / "summary.json").is_file()} == {"kd", "egad"}

    (check,) = state["crosscheck"]  # the live kd run beside its cache-trained twin
    assert check["method"] == "kd" and check["seed"] == "0"
    assert check["relative"] == pytest.approx(check["cache"] / check["live"] - 1)
    (point,) = state["sensitivity"]
    assert point["knob"] == "branch.q" and point["value"] == "0.15" and "(n=1)" in point["vs_default"]
    study_md = (out / "study.md").read_text()
    assert "Live cross-check" in study_md and "| branch.q | 0.15 |" in study_md

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

    other = subprocess.run([*argv, "--seeds", "0,1"], capture_output=True, text=True, check=False)
    assert other.returncode != 0 and "other settings (seeds" in other.stderr and "--out" in other.stderr


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    for bad, message in ((["--corpora", "embedded,fortunes"], "unknown"), (["--knobs", "branch.q"], "key=v1"),
                         (["--steps", "0"], "--steps"), (["--methods", "kd,egda"], "no method preset ['egda']"),
                         (["--live", "kdd"], "--live"), (["--seeds", "0,one"], "--seeds"),
                         (["--methods", "kd"], "keep egad in --methods")):
        done = subprocess.run([sys.executable, str(STUDY), "--out", str(tmp_path / "s"), *bad],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "s").exists()


def test_a_knob_that_does_not_compose_is_refused_before_any_work(tmp_path):
    done = subprocess.run([sys.executable, str(STUDY), "--out", str(tmp_path / "s"), "--knobs", "branch.qq=0.1"],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode != 0 and "--knobs branch.qq=0.1 does not compose" in done.stderr
    assert not (tmp_path / "s").exists()
