"""Hydra's launchers and sweeper (the `sweep` extra) run egad's sweeps: the joblib launcher runs jobs in
parallel processes, a failed job is still listed at the end, and the optuna sweeper minimises the held-out KL
that `egad distill` returns. Each job is `debug=smoke` (seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# every test starts launcher processes or sweeps (5-15 s each): `make test-slow` and .ci/run run them
pytestmark = pytest.mark.slow

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the sweep extra: pip install 'egad-cli[sweep]'")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the sweep extra: pip install 'egad-cli[sweep]'")


def _egad(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "EGAD_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "egad_cli", *argv], env=env, capture_output=True, text=True,
                          timeout=600, check=False, cwd=tmp_path)


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_joblib_launcher_runs_two_jobs_in_parallel(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _egad(tmp_path, "distill", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "method=kd,egad",
                 "debug=smoke", "trainer.threads=1", "trainer.max_steps=8", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _job_dirs(sweep)
    assert [p.name.split("__")[0] for p in jobs] == ["0_method:kd", "1_method:egad"]
    spans = []
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["steps"] == 8 and summary["kl_after"] > 0
        # a job's span: its config.yaml is written before the models load, its summary.json after training
        spans.append(((job / "config.yaml").stat().st_mtime, (job / "summary.json").stat().st_mtime))
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a, f"the jobs ran one after the other: {spans}"


def test_joblib_launcher_lists_a_failed_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _egad(tmp_path, "distill", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 "trainer.lr=1e-3,-1", "debug=smoke", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "1 job(s) of the sweep failed" in proc.stderr and "trainer.lr" in proc.stderr
    assert (sweep / "0_trainer.lr:0.001" / "summary.json").is_file()
    assert "trainer.lr" in (sweep / "1_trainer.lr:-1" / "error.txt").read_text()


def test_optuna_sweeper_minimises_the_heldout_kl(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _egad(tmp_path, "distill", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                 "hydra.sweeper.direction=minimize", "hydra.sweeper.sampler.seed=0", "trainer.lr=interval(1e-4,3e-2)",
                 "debug=smoke", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [p for p in _job_dirs(sweep) if (p / "summary.json").is_file()]
    assert len(jobs) == 3
    kl = {float(json.loads((p / "summary.json").read_text())["kl_after"]): p for p in jobs}
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(kl))
    lr = float(best["best_params"]["trainer.lr"])
    assert yaml.safe_load((kl[min(kl)] / "config.yaml").read_text())["trainer"]["lr"] == pytest.approx(lr)


def test_a_failed_job_is_listed_once_with_a_relative_sweep_dir(tmp_path):
    """The job records its failure with its absolute dir, the end-of-sweep callback finds it under the
    sweep dir as given (relative here): one entry."""
    proc = _egad(tmp_path, "distill", "-m", "trainer.lr=-1,1e-3", "debug=smoke", "eval.before=false",
                 "hydra.sweep.dir=sweep")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "1 job(s) of the sweep failed" in proc.stderr


def test_optuna_goes_on_after_a_failed_trial_and_lists_it(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _egad(tmp_path, "distill", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4",
                 "hydra.sweeper.sampler.seed=1", "trainer.lr=choice(-1,0.001,0.003)", "debug=smoke",
                 "eval.before=false", f"hydra.sweep.dir={sweep}")
    failed = sorted(p for p in _job_dirs(sweep) if (p / "error.txt").is_file())
    done = [p for p in _job_dirs(sweep) if (p / "summary.json").is_file()]
    assert len(failed) + len(done) == 4 and done, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(json.loads((p / "summary.json").read_text())["kl_after"]
                                                   for p in done))
    assert failed, "sampler seed 1 draws lr=-1 (measured: trial 1); pick a seed that does"
    assert proc.returncode == 2 and f"{len(failed)} job(s) of the sweep failed" in proc.stderr


def test_optuna_with_no_completed_trial_ends_with_the_list(tmp_path):
    proc = _egad(tmp_path, "distill", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                 "trainer.lr=choice(-1,-2)", "debug=smoke", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "the sweep stopped; 2 job(s) failed" in proc.stderr and "trainer.lr" in proc.stderr
