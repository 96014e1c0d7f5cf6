"""`egad eval` end to end through argv: a smoke distill run dir, a student equal to the teacher, and the
clear errors (run dir without a student, vocabulary mismatch, empty split, several problems at once)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import egad, smoke_argv, text_dataset_args


def stderr(capsys) -> str:
    """Captured stderr with the console's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


KEYS = ("ppl_student", "ppl_teacher", "kl_forward", "kl_reverse", "top1_agreement", "ece",
        "by_entropy_decile")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus_dir):
    """One short `egad distill debug=smoke` run on the tiny text corpus."""
    root = tmp_path_factory.mktemp("eval_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", list(sys.argv))
        mp.setenv("HF_HUB_OFFLINE", "1")
        code = egad(*smoke_argv(root / "run", corpus_dir, "trainer.max_steps=2", "eval.before=false",
                                cache=root / "cache"))
    assert code == 0
    return root / "run"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """The `teacher=random` model saved as a transformers directory (a student identical to the teacher)."""
    from omegaconf import OmegaConf

    from egad_cli.config import conf_dir
    from egad_cli.config.schema import TeacherConfig
    from egad_cli.models import load_teacher

    path = tmp_path_factory.mktemp("teacher_copy")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TeacherConfig),
                                              OmegaConf.load(conf_dir() / "teacher" / "random.yaml")))
    model, tok = load_teacher(cfg, Path("unused"), torch.float32)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def random_teacher_args(corpus: Path) -> list[str]:
    return ["teacher=random", *text_dataset_args(corpus), "dataset.block_size=32", "progress=false",
            "eval.max_new_tokens=3", "eval.batch_size=8"]


def test_eval_on_a_run_dir(run_dir, tmp_path, capsys):
    assert egad("eval", f"run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'out'}", "progress=false",
                "eval.max_new_tokens=3") == 0
    out = capsys.readouterr().out
    assert "held-out metrics" in out and "by teacher-entropy decile" in out and "generations" in out
    result = json.loads((run_dir / "eval.json").read_text())
    assert all(k in result for k in KEYS)
    assert len(result["by_entropy_decile"]) == 10
    assert sum(r["n_tokens"] for r in result["by_entropy_decile"]) == result["n_tokens"]
    assert result["kl_forward"] > 0 and 0 <= result["ece"] <= 1 and 0 <= result["top1_agreement"] <= 1
    assert result["setup"]["teacher"] == "random" and result["setup"]["dataset"] == "text"   # from the run
    assert [g["prompt"] for g in result["generations"]] == ["def fibonacci(n):", "import os\n"]
    assert result["kl_forward_top_decile"] == result["by_entropy_decile"][-1]["kl_forward"]


def test_command_line_overrides_win_over_the_run_config(run_dir, tmp_path):
    assert egad("eval", f"run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'out'}", "progress=false",
                "eval.max_new_tokens=0", "dataset.block_size=16", f"out_dir={tmp_path}") == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["setup"]["block_size"] == 16 and result["setup"]["dataset"] == "text"
    assert result["generations"] == []


def test_student_identical_to_teacher(teacher_dir, corpus_dir, tmp_path):
    assert egad("eval", f"student.path={teacher_dir}", *random_teacher_args(corpus_dir),
                f"hydra.run.dir={tmp_path}") == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["kl_forward"] == pytest.approx(0.0, abs=1e-6)
    assert result["kl_reverse"] == pytest.approx(0.0, abs=1e-6)
    assert result["top1_agreement"] == 1.0
    assert result["ppl_student"] == pytest.approx(result["ppl_teacher"], rel=1e-5)
    assert result["ece"] == pytest.approx(result["ece_teacher"], abs=1e-6)
    assert all(r["top1_agreement"] == 1.0 for r in result["by_entropy_decile"])
    assert all(g["student"] == g["teacher"] for g in result["generations"])


def test_run_dir_without_a_student(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(run_dir / "config.yaml", broken / "config.yaml")
    assert egad("eval", f"run_dir={broken}", f"hydra.run.dir={tmp_path / 'out'}") == 2
    err = stderr(capsys)
    assert "has no exported student" in err and "trainer.export" in err
    assert egad("eval", f"run_dir={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'out'}") == 2
    assert "does not exist" in stderr(capsys)


def test_a_student_with_another_vocabulary_is_evaluated_across_tokenizers(teacher_dir, corpus_dir, tmp_path, capsys):
    """One token the teacher lacks makes another vocabulary: the cross-tokenizer metrics, not a refusal."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "other"
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    tok.add_tokens(["<extra_token>"])
    model = AutoModelForCausalLM.from_pretrained(teacher_dir)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(other)
    tok.save_pretrained(other)
    assert egad("eval", f"student.path={other}", *random_teacher_args(corpus_dir),
                f"hydra.run.dir={tmp_path / 'out'}") == 0
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    # every byte and EOS are shared strings, so every position of the two (identical) tokenisations aligns, and
    # the student (the teacher's weights, one extra row) predicts almost what the teacher does
    assert result["aligned_share"] == 1.0
    assert result["bits_per_byte_student"] == pytest.approx(result["bits_per_byte_teacher"], rel=0.05)
    assert result["kl_forward"] < 0.05


def test_empty_split(tmp_path, capsys, teacher_dir):
    (tmp_path / "one.txt").write_text("tiny\n")
    assert egad("eval", f"student.path={teacher_dir}", "teacher=random", "dataset=text",
                f"dataset.paths=['{tmp_path}/one.txt']", f"hydra.run.dir={tmp_path / 'out'}") == 2
    assert "split" in stderr(capsys)


def test_every_config_problem_at_once(tmp_path, capsys):
    assert egad("eval", "split=test", "ece_bins=0", "device=tpu", "eval.batch_size=0",
                f"hydra.run.dir={tmp_path}") == 2
    err = stderr(capsys)
    for key in ("student.path", "split", "ece_bins", "device", "eval.batch_size"):
        assert f"{key}:" in err


def test_debug_smoke_runs_on_tiny_random_models(tmp_path, capsys):
    from conftest import egad

    assert egad("eval", "debug=smoke", f"hydra.run.dir={tmp_path}") == 0
    assert (tmp_path / "eval.json").is_file()
    assert "teacher=random" in capsys.readouterr().out


def test_split_all_evaluates_every_block_of_your_own_files(tmp_path, capsys):
    """split=all: held-out files of the user's own are evaluated whole, not re-split by val_fraction."""
    from conftest import egad, write_corpus

    heldout = write_corpus(tmp_path / "heldout", n_files=2, seed=7)
    out = tmp_path / "out"
    assert egad("eval", "debug=smoke", "dataset=text", f"dataset.paths=[{heldout}/*.txt]", "split=all",
                f"hydra.run.dir={out}") == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["setup"]["split"] == "all" and result["setup"]["blocks"] > 0
    assert not list(out.glob("*.log"))  # no empty eval.log beside it
