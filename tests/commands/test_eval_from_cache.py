"""`egad eval teacher_cache=DIR`: the teacher read from an exact cache's stored final states through its head, so no
teacher runs. Against the live eval of the same run: the student's values are the same pass, bit for bit; the
teacher's differ by the fp16 rounding of the stored states only (the cache records that rounding's KL to live,
``format_error``); a run of another corpus, a compact cache and split=all are refused, before anything is
written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import egad

SMOKE = ("debug=smoke",)
#: the student's own values: the same model, blocks, batches and kernels in both evals
STUDENT_KEYS = ("ppl_student", "entropy_student", "acc_student", "ece", "bits_per_byte_student")
#: values through the teacher's distribution: they move with the stored states' rounding
TEACHER_KEYS = ("ppl_teacher", "kl_forward", "kl_reverse", "entropy_teacher", "bits_per_byte_teacher")


def stderr(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(an exact smoke cache, a run trained from it with its student exported)."""
    root = tmp_path_factory.mktemp("eval_cache")
    cache = root / "cache"
    assert egad("cache", *SMOKE, f"out_dir={cache}", f"hydra.run.dir={root / 'cache-log'}",
                f"cache_dir={root / 'egad'}") == 0
    run = root / "run"
    assert egad("distill", *SMOKE, f"teacher_cache={cache}", f"hydra.run.dir={run}", "trainer.max_steps=3") == 0
    return cache, run


def evaluate(run: Path, out: Path, *extra: str) -> int:
    return egad("eval", *SMOKE, f"run_dir={run}", f"out_dir={out}", f"hydra.run.dir={out}-log", "progress=false",
                "eval.max_new_tokens=0", "eval.onpolicy_prompts=0", *extra)


@pytest.mark.numerics
def test_eval_from_the_exact_cache_equals_the_live_eval(trained, tmp_path, capsys):
    cache, run = trained
    assert evaluate(run, tmp_path / "live") == 0
    assert evaluate(run, tmp_path / "cached", f"teacher_cache={cache}") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"teacher read from the exact cache {cache}" in out
    live = json.loads((tmp_path / "live" / "eval.json").read_text())
    cached = json.loads((tmp_path / "cached" / "eval.json").read_text())
    assert cached["setup"]["teacher_cache"] == str(cache) and live["setup"]["teacher_cache"] is None
    assert cached["n_tokens"] == live["n_tokens"] > 0
    assert cached["setup"]["blocks"] == live["setup"]["blocks"]
    for key in STUDENT_KEYS:
        assert cached[key] == pytest.approx(live[key], rel=1e-6), key
    # the stored states' rounding moves each token's teacher distribution by at most the cache's recorded KL to
    # live (kl_max); the held-out means move by far less than this relative bound at the smoke's values (~0.1-5)
    kl_max = json.loads((cache / "manifest.json").read_text())["format_error"]["kl_max"]
    assert 0 <= kl_max < 1e-3
    for key in TEACHER_KEYS:
        assert cached[key] == pytest.approx(live[key], rel=2e-3, abs=2 * kl_max), key
    # a top-1 can flip where two ids tie to within the rounding: at most a token or two of the held-out split
    flips = 2 / live["n_tokens"]
    assert cached["top1_agreement"] == pytest.approx(live["top1_agreement"], abs=flips)
    assert cached["acc_teacher"] == pytest.approx(live["acc_teacher"], abs=flips)
    # the deciles cut by the teacher's entropy: the same tokens fall in each (ties at a cut aside)
    a, b = live["by_entropy_decile"], cached["by_entropy_decile"]
    assert len(a) == len(b) == 10
    for x, y in zip(a, b):
        assert abs(x["n_tokens"] - y["n_tokens"]) <= 2
        assert y["kl_forward"] == pytest.approx(x["kl_forward"], rel=5e-3, abs=2 * kl_max)


def test_the_cache_eval_says_what_it_leaves_out(trained, tmp_path, capsys):
    """Generations and the on-policy metric feed the teacher new tokens: not run from a cache, and said so."""
    cache, run = trained
    assert egad("eval", *SMOKE, f"run_dir={run}", f"out_dir={tmp_path}", f"hydra.run.dir={tmp_path}-log",
                "progress=false", f"teacher_cache={cache}", "eval.max_new_tokens=3") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "generations and the on-policy metric feed new tokens to the teacher" in out
    assert json.loads((tmp_path / "eval.json").read_text())["generations"] == []


def test_a_run_of_another_corpus_is_refused(trained, tmp_path, capsys, corpus_dir):
    """A run trained on other data than the cache holds: its metrics against the cache would be on another
    corpus's held-out split. Refused by key, before anything is written."""
    from conftest import smoke_argv

    cache, _ = trained
    other = tmp_path / "other"
    assert egad(*smoke_argv(other, corpus_dir, "trainer.max_steps=1", "eval.before=false",
                            cache=tmp_path / "egad")) == 0
    before = sorted(p.name for p in other.iterdir())
    capsys.readouterr()
    assert evaluate(other, other, f"teacher_cache={cache}") == 2
    err = stderr(capsys)
    assert "was built from another teacher or dataset than the run" in err and "dataset." in err
    assert "drop teacher_cache" in err
    assert sorted(p.name for p in other.iterdir()) == before  # no eval.json, nothing else touched


def test_a_run_with_another_training_budget_is_evaluated_on_the_same_held_out_split(trained, tmp_path):
    """dataset.max_train_tokens trims the train split only: a longer run on the cache's data (live here) is
    measured against the cache on the very blocks its own live eval reads."""
    cache, _ = trained
    longer = tmp_path / "longer"
    budget = json.loads((cache / "manifest.json").read_text())["dataset"]["max_train_tokens"]
    assert egad("distill", *SMOKE, f"hydra.run.dir={longer}", "trainer.max_steps=2",
                f"dataset.max_train_tokens={2 * budget}", f"cache_dir={tmp_path / 'egad'}") == 0
    assert evaluate(longer, tmp_path / "live", f"cache_dir={tmp_path / 'egad'}") == 0
    assert evaluate(longer, tmp_path / "cached", f"teacher_cache={cache}") == 0
    live = json.loads((tmp_path / "live" / "eval.json").read_text())
    cached = json.loads((tmp_path / "cached" / "eval.json").read_text())
    assert cached["n_tokens"] == live["n_tokens"]
    assert cached["kl_forward"] == pytest.approx(live["kl_forward"], rel=2e-3)
    # split=train depends on the budget: refused there
    assert evaluate(longer, tmp_path / "train", f"teacher_cache={cache}", "split=train") == 2


def test_a_compact_cache_is_refused_with_the_command_for_an_exact_one(trained, tmp_path, capsys):
    _, run = trained
    sampled = tmp_path / "sampled"
    assert egad("cache", *SMOKE, "kind=sampled", f"out_dir={sampled}", f"hydra.run.dir={tmp_path / 'log'}",
                f"cache_dir={tmp_path / 'egad'}") == 0
    capsys.readouterr()
    assert evaluate(run, tmp_path / "out", f"teacher_cache={sampled}") == 2
    err = stderr(capsys)
    assert "is a sampled cache" in err and "kind=exact" in err and "egad cache" in err
    assert not (tmp_path / "out" / "eval.json").exists()


def test_split_all_with_a_cache_is_a_config_error(trained, tmp_path, capsys):
    cache, run = trained
    assert evaluate(run, tmp_path / "out", f"teacher_cache={cache}", "split=all") == 2
    assert "split=all" in stderr(capsys)
