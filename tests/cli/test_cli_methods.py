"""`egad distill -m debug=smoke method=<all nine>`: every method runs in one sweep, logs the loss mix and its
policies' statistics, and only the dual branch (EGAD) carries projectors, which are never exported."""

from __future__ import annotations

import json
import math
import sys

import pytest
import yaml
from conftest import egad, read_jsonl, text_dataset_args
from safetensors import safe_open

from egad_cli.engine.checkpoint import load_checkpoint

METHODS = ("kd", "rkl", "jsd", "skew_kl", "tvd", "eakd", "adakd", "ce", "egad")
LOGGED = ("loss", "loss_logit", "loss_feature", "loss_ce", "tau_mean", "weight_mean", "hard_frac", "lr",
          "tokens_per_s", "step")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, corpus_dir):
    root = tmp_path_factory.mktemp("methods")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", list(sys.argv))
        mp.setenv("EGAD_CACHE_DIR", str(root / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        code = egad("distill", "-m", "debug=smoke", f"method={','.join(METHODS)}", f"hydra.sweep.dir={root / 'sweep'}",
                    "eval.before=false", *text_dataset_args(corpus_dir))
    assert code == 0
    jobs = {}
    for job in (root / "sweep").iterdir():
        if job.is_dir() and (job / "config.yaml").is_file():
            jobs[yaml.safe_load((job / "config.yaml").read_text())["method"]["name"]] = job
    return jobs


def test_every_method_has_its_own_job_dir(sweep):
    assert sorted(sweep) == sorted(METHODS)
    for method, job in sweep.items():
        assert job.name.endswith(f"method:{method}")
        summary = json.loads((job / "summary.json").read_text())
        assert summary["method"] == method and summary["steps"] == 4
        assert math.isfinite(summary["kl_after"])


@pytest.mark.parametrize("method", METHODS)
def test_metrics_are_finite_and_complete(sweep, method):
    rows = read_jsonl(sweep[method] / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        for key in LOGGED:
            assert key in r, f"{method}: {key} missing from metrics.jsonl"
            assert r[key] is not None and math.isfinite(r[key]), f"{method}: {key}={r[key]}"
        # the loss mix is visible and adds up
        assert r["loss"] == pytest.approx(r["loss_logit"] + r["loss_feature"] + r["loss_ce"], rel=1e-5, abs=1e-6)
        assert r["loss"] > 0
        if method == "adakd":
            assert 0.1 <= r["adakd_ratio"] <= 1.0
        else:
            assert "adakd_ratio" not in r


def test_each_method_uses_its_own_loss_terms(sweep):
    def rows(m):
        return read_jsonl(sweep[m] / "metrics.jsonl")

    for m in METHODS:
        for r in rows(m):
            if m == "ce":  # labels only: no teacher term
                assert r["loss_logit"] == 0 and r["loss_ce"] > 0
            else:
                assert r["loss_logit"] > 0 and r["loss_ce"] == 0
            if m == "egad":  # dual branch: 30 % hard tokens get the feature loss
                assert r["loss_feature"] > 0 and r["hard_frac"] == pytest.approx(0.3, abs=0.02)
            else:
                assert r["loss_feature"] == 0 and r["hard_frac"] == 0
            if m in ("kd", "rkl", "jsd", "skew_kl", "tvd", "eakd", "ce"):  # fixed temperature 1
                assert r["tau_mean"] == pytest.approx(1.0)
            if m in ("kd", "rkl", "jsd", "skew_kl", "tvd", "ce"):  # uniform weights, no curriculum
                assert r["weight_mean"] == pytest.approx(1.0)
    # different divergences really are different losses on the same first batch (same init, same data)
    first = {m: rows(m)[0]["loss_logit"] for m in ("kd", "rkl", "jsd", "skew_kl", "tvd")}
    assert len({round(v, 6) for v in first.values()}) == len(first), first
    # adaptive temperatures move tau away from 1; EA-KD weights are not uniform
    assert rows("egad")[0]["tau_mean"] != pytest.approx(1.0)
    assert rows("adakd")[0]["tau_mean"] != pytest.approx(1.0)
    assert rows("eakd")[0]["weight_mean"] != pytest.approx(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_only_the_dual_branch_checkpoints_projectors_and_none_are_exported(sweep, method):
    job = sweep[method]
    modules = load_checkpoint(job / "checkpoints" / "step-4")["modules"]["train_modules"]
    has_projectors = any(k.startswith("projectors.") for k in modules)
    assert has_projectors == (method == "egad")
    assert any(k.startswith("student.") for k in modules)
    with safe_open(str(job / "student" / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert keys and not any("projector" in k for k in keys)
    # the export holds exactly the student's weights (tied lm_head may be left out)
    student_keys = {k.removeprefix("student.") for k in modules if k.startswith("student.")}
    assert set(keys) <= student_keys and len(student_keys - set(keys)) <= 1
