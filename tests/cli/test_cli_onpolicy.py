"""On-policy distillation end to end through argv: every preset runs on debug=smoke and logs its sampling, a
resumed on-policy run samples and trains what an uninterrupted one does, jsonl prompts are the records', bad
settings fail before any model loads, and `egad eval` reports the on-policy metric."""

from __future__ import annotations

import json

import pytest
from conftest import egad, losses_by_step, read_jsonl, smoke_argv
from test_cli_errors import assert_cheap_failure, loads, run_bad  # noqa: F401  (loads: a fixture)


@pytest.fixture(scope="module")
def onpolicy_run(tmp_path_factory, corpus_dir):
    root = tmp_path_factory.mktemp("onpolicy")
    run_dir, cache = root / "run", root / "cache"
    assert egad(*smoke_argv(run_dir, corpus_dir, "method=onpolicy", cache=cache)) == 0
    return {"run_dir": run_dir, "cache": cache, "corpus": corpus_dir}


@pytest.mark.parametrize("argv,share", [(["method=gkd"], (0.0, 1.0)), (["method=eopd"], (1.0, 1.0)),
                                        (["method=egad", "onpolicy.lmbda=1"], (1.0, 1.0)),
                                        (["method=kd", "onpolicy.lmbda=0.25"], (0.0, 1.0))])
def test_every_preset_runs_on_smoke_and_logs_its_sampling(tmp_path, corpus_dir, argv, share):
    run = tmp_path / "run"
    assert egad(*smoke_argv(run, corpus_dir, *argv, cache=tmp_path / "cache")) == 0
    rows = read_jsonl(run / "metrics.jsonl")
    assert len(rows) == 4
    for row in rows:
        low, high = share
        assert low <= row["onpolicy_frac"] <= high
        assert 0 < row["gen_share"] < 1 and row["time_gen_s"] > 0
        assert row["time_plan_s"] <= row["time_step_s"]
    assert any(row["onpolicy_frac"] > 0 for row in rows) and any(row["gen_len"] > 0 for row in rows)
    assert json.loads((run / "summary.json").read_text())["kl_after"] is not None


def test_off_policy_runs_log_no_sampling(tmp_path, corpus_dir):
    run = tmp_path / "run"
    assert egad(*smoke_argv(run, corpus_dir, "method=kd", "trainer.max_steps=1", cache=tmp_path / "cache")) == 0
    row = read_jsonl(run / "metrics.jsonl")[0]
    assert "onpolicy_frac" not in row and "time_gen_s" not in row and "time_step_s" in row


def test_a_resumed_onpolicy_run_continues_the_uninterrupted_one(onpolicy_run, tmp_path):
    """Sampling seeds are a function of (onpolicy.seed, sequence): from the step-2 checkpoint, steps 3-4
    sample the same continuations and give the same losses."""
    first, resumed = onpolicy_run["run_dir"], tmp_path / "resumed"
    assert egad(*smoke_argv(resumed, onpolicy_run["corpus"], "method=onpolicy",
                            f"trainer.resume={first / 'checkpoints' / 'step-2'}", cache=onpolicy_run["cache"])) == 0
    for key in ("loss", "gen_len", "onpolicy_frac"):
        want, got = losses_by_step(first, key), losses_by_step(resumed, key)
        for step in (3, 4):
            assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), (key, step)


def test_jsonl_prompts_are_the_records_prompts(tmp_path, capsys):
    path = tmp_path / "sft.jsonl"
    rows = [{"prompt": f"question {i}: what is {i} plus {i}?", "response": f"the answer is {2 * i}."}
            for i in range(300)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    run = tmp_path / "run"
    code = egad("distill", "debug=smoke", f"hydra.run.dir={run}", "dataset=jsonl", f"dataset.paths=[{path}]",
                "method=onpolicy", f"cache_dir={tmp_path / 'cache'}")
    out = capsys.readouterr().out
    assert code == 0
    assert "prompts of the data" in out.replace("\n", " ")
    assert all(r["onpolicy_frac"] == 1.0 for r in read_jsonl(run / "metrics.jsonl"))


@pytest.mark.parametrize("argv,key", [
    (["onpolicy.lmbda=1", "onpolicy.max_new_tokens=0"], "onpolicy.max_new_tokens"),
    (["onpolicy.lmbda=1", "onpolicy.prompt_tokens=40"], "onpolicy.prompt_tokens"),  # the block is 32
    (["onpolicy.lmbda=1", "onpolicy.prompt_tokens=20", "onpolicy.max_new_tokens=20"], "onpolicy.prompt_tokens"),
    (["onpolicy.lmbda=1.5"], "onpolicy.lmbda"),
    (["onpolicy.lmbda=1", "onpolicy.top_p=0"], "onpolicy.top_p"),
    (["method=onpolicy", "teacher_cache=/somewhere"], "teacher_cache"),
])
def test_bad_onpolicy_settings_fail_before_any_model_loads(capsys, tmp_path, loads, argv, key):  # noqa: F811
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", *argv)
    assert code == 2 and key.split(".")[0] in err and "Traceback" not in err
    assert key in err or key == "teacher_cache"
    assert_cheap_failure(tmp_path / "run", loads)


def test_eval_reports_the_onpolicy_metric(onpolicy_run, tmp_path):
    run = onpolicy_run["run_dir"]
    assert egad("eval", "debug=smoke", f"run_dir={run}", f"hydra.run.dir={tmp_path / 'eval'}",
                f"cache_dir={onpolicy_run['cache']}", "eval.onpolicy_prompts=6") == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["onpolicy_prompts"] == 6 and 6 <= result["onpolicy_tokens"] <= 6 * 16
    for key in ("onpolicy_kl_reverse", "onpolicy_kl_forward", "onpolicy_nll_teacher", "onpolicy_nll_student"):
        assert result[key] > 0, key
    # seeded: a second eval samples the same continuations
    assert egad("eval", "debug=smoke", f"run_dir={run}", f"hydra.run.dir={tmp_path / 'eval2'}",
                f"cache_dir={onpolicy_run['cache']}", "eval.onpolicy_prompts=6", f"out_dir={tmp_path / 'o2'}") == 0
    again = json.loads((tmp_path / "o2" / "eval.json").read_text())
    assert again["onpolicy_kl_reverse"] == result["onpolicy_kl_reverse"]
    assert egad("eval", "debug=smoke", f"run_dir={run}", f"hydra.run.dir={tmp_path / 'eval3'}",
                f"cache_dir={onpolicy_run['cache']}", "eval.onpolicy_prompts=0", f"out_dir={tmp_path / 'o3'}") == 0
    assert "onpolicy_kl_reverse" not in json.loads((tmp_path / "o3" / "eval.json").read_text())
