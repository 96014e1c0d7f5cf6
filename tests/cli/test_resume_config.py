"""Resuming takes the run's own saved config: the printed resume command works verbatim for a run started
with overrides; changing what would break the run is refused by name; trust never comes from a file."""

from __future__ import annotations

import pytest
from conftest import compose_distill, egad, losses_by_step, smoke_argv
from omegaconf import OmegaConf

from egad_cli.commands.distill import RESUME_GROUPS
from egad_cli.commands.runs import with_run_dir


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, corpus_dir):
    run = tmp_path_factory.mktemp("kd") / "run"
    assert egad(*smoke_argv(run, corpus_dir, "method=kd", "trainer.lr=3e-3", "eval.before=false")) == 0
    return run


def test_resume_with_nothing_but_the_checkpoint_continues_the_run(kd_run, tmp_path):
    """No debug=smoke, no dataset, no method on the command line: all of it comes from the run's config.yaml
    (the default config would be the SmolLM2 teacher and egad, and would not fit the checkpoint)."""
    resumed = tmp_path / "resumed"
    assert egad("distill", f"trainer.resume={kd_run / 'checkpoints' / 'step-2'}", f"hydra.run.dir={resumed}") == 0
    config = OmegaConf.load(resumed / "config.yaml")
    assert (config.method.name, config.teacher.name, config.trainer.lr) == ("kd", "random", 3e-3)
    want, got = losses_by_step(kd_run), losses_by_step(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    assert got[4] == pytest.approx(want[4], rel=1e-6)


def test_a_resume_may_extend_the_budget(kd_run, tmp_path):
    resumed = tmp_path / "longer"
    assert egad("distill", f"trainer.resume={kd_run}", "trainer.max_steps=6", f"hydra.run.dir={resumed}") == 0
    assert sorted(losses_by_step(resumed)) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("change,key", [("method=egad", "method"), ("trainer.lr=1e-2", "trainer.lr"),
                                        ("dataset.block_size=16", "dataset.block_size"),
                                        ("student.arch.hidden_size=48", "student.arch.hidden_size")])
def test_a_change_that_would_break_the_run_is_refused_by_name(kd_run, tmp_path, capsys, change, key):
    out = tmp_path / "refused"
    code = egad("distill", f"trainer.resume={kd_run}", change, f"hydra.run.dir={out}")
    err = capsys.readouterr().err
    assert code == 2 and key in err and "trainer.resume" in err and "Traceback" not in err
    assert not any((out / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints"))


def test_trust_remote_code_never_comes_from_a_run_config(tmp_path):
    run = tmp_path / "received"
    run.mkdir()
    saved = compose_distill(["teacher=hf", "teacher.path=/models/x", "teacher.trust_remote_code=true"])
    OmegaConf.save(saved, run / "config.yaml")
    merged = with_run_dir(compose_distill(), run, RESUME_GROUPS, [], student=False)
    assert merged.teacher.path == "/models/x" and merged.teacher.trust_remote_code is False
    opted_in = with_run_dir(compose_distill(["teacher.trust_remote_code=true"]), run, RESUME_GROUPS,
                            ["teacher.trust_remote_code=true"], student=False)
    assert opted_in.teacher.trust_remote_code is True  # the person at the command line asked for it
