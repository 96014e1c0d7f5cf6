"""`egad inspect-entropy` end to end through argv on the random teacher (and once on the embedded SmolLM2)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import egad, smoke_argv, smollm2_installed, text_dataset_args


def base_args(corpus: Path, *extra: str) -> list[str]:
    return ["inspect-entropy", "teacher=random", *text_dataset_args(corpus), "dataset.block_size=32",
            "progress=false", "max_tokens=1024", *extra]


def test_histogram_quantiles_thresholds_and_saved_files(corpus_dir, tmp_path, capsys):
    out_dir = tmp_path / "saved"
    assert egad(*base_args(corpus_dir, f"hydra.run.dir={tmp_path / 'run'}", f"out_dir={out_dir}", "bins=12",
                           "curriculum.mode=hard")) == 0
    out = capsys.readouterr().out
    for text in ("teacher token entropy", "quantiles", "hard tokens", "curriculum linear",
                 "highest mean entropy", "lowest mean entropy", "context length", "◂ hard", "s=0",
                 "hard-token cut (top 0.3)"):
        assert text in out, text
    result = json.loads((out_dir / "entropy.json").read_text())
    n = result["n_tokens"]
    assert n == 32 * 31                                    # 32 blocks of 32 tokens: 31 predictions each
    assert len(result["histogram"]["teacher"]) == 12 and sum(result["histogram"]["teacher"]) == n
    q = result["quantiles"]["teacher"]
    assert q["min"] <= q["p1"] <= q["p50"] <= q["p99"] <= q["max"]
    th = result["thresholds"]
    assert th["hard"]["tokens"] == -(-3 * n // 10)         # ceil(0.3 n)
    assert [g["s"] for g in th["gates"]] == [0.0, 0.5, 1.0]
    assert th["gates"][0]["share"] == pytest.approx(0.3, abs=0.01)
    assert len(result["tokens"]["highest"]) == 10 and "context" in result["tokens"]["highest"][0]
    assert sum(r["count"] for r in result["by_position"]) == n
    with (out_dir / "entropy_tokens.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and set(rows[0]) == {"block", "position", "token_id", "token", "entropy_teacher"}
    assert (out_dir / "entropy_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_with_a_student_shows_its_entropy_and_the_gap(corpus_dir, tmp_path, capsys):
    assert egad(*base_args(corpus_dir, f"hydra.run.dir={tmp_path}", "student=tiny", "save=true",
                           "log_scale=true")) == 0
    out = capsys.readouterr().out
    assert "student token entropy" in out and "gap S−T" in out
    result = json.loads((tmp_path / "entropy.json").read_text())
    assert set(result["quantiles"]) == {"teacher", "student", "gap"}
    assert sum(result["histogram"]["student"]) == result["n_tokens"]
    with (tmp_path / "entropy_tokens.csv").open() as f:
        assert "gap" in next(csv.reader(f))


def test_run_dir_brings_its_groups_and_student(corpus_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert egad(*smoke_argv(run, corpus_dir, "trainer.max_steps=1", "eval.before=false")) == 0
    capsys.readouterr()
    assert egad("inspect-entropy", f"run_dir={run}", f"hydra.run.dir={tmp_path / 'ie'}", "progress=false",
                "max_tokens=256", "save=true") == 0
    out = capsys.readouterr().out
    assert "student token entropy" in out and "curriculum linear" in out   # the run's method=egad groups
    result = json.loads((tmp_path / "ie" / "entropy.json").read_text())
    assert result["setup"]["student"] == str(run / "student") and result["setup"]["dataset"] == "text"


def test_clear_errors(tmp_path, capsys, corpus_dir):
    assert egad("inspect-entropy", "bins=1", "max_tokens=-1", "split=test", f"hydra.run.dir={tmp_path}") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "3 config problem(s)" in err and "bins:" in err and "max_tokens:" in err and "split:" in err
    assert egad(*base_args(corpus_dir, f"run_dir={tmp_path / 'missing'}", f"hydra.run.dir={tmp_path}")) == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())


@pytest.mark.skipif(not smollm2_installed(), reason="the embedded teacher's package is not installed")
def test_embedded_teacher_end_to_end(corpus_dir, tmp_path, capsys, monkeypatch):
    """The embedded SmolLM2 teacher on a small budget. Shares the user's cache (dequantised once, ~20 s the
    first time) so that it takes seconds afterwards; the corpus is the tiny text one, not the stdlib."""
    cache = Path("~/.cache/egad").expanduser()
    assert egad("inspect-entropy", *text_dataset_args(corpus_dir), f"cache_dir={cache}", "max_tokens=512",
                "progress=false", f"hydra.run.dir={tmp_path}") == 0
    out = capsys.readouterr().out
    assert "teacher=smollm2" in out and "vocab 49152" in out and "teacher token entropy" in out


def test_debug_smoke_runs_on_tiny_random_models(tmp_path, capsys):
    from conftest import egad

    assert egad("inspect-entropy", "debug=smoke", f"hydra.run.dir={tmp_path}") == 0
    out = capsys.readouterr().out
    assert "teacher=random" in out and "student=tiny" in out
