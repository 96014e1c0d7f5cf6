"""`egad distill` end to end through argv on a tiny random teacher/student: run-dir artifacts, the exported
student, reproducibility, resume, and a Hydra multirun sweep."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import egad, losses_by_step, read_jsonl, smoke_argv, text_dataset_args
from safetensors import safe_open

import egad_cli.commands.distill_job as distill_cmd
from egad_cli.engine.checkpoint import MANIFEST, load_checkpoint


class _Recorder:
    """Replaces DistillUnit in the distill command to keep the in-process unit (and its student)."""

    def __init__(self):
        self.units = []

    def install(self, mp):
        original = distill_cmd.DistillUnit
        recorder = self

        class Recording(original):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                recorder.units.append(self)

        mp.setattr(distill_cmd, "DistillUnit", Recording)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, corpus_dir):
    """One `egad distill debug=smoke` on the tiny text corpus (method egad: dual branch), shared below."""
    root = tmp_path_factory.mktemp("smoke")
    run_dir, cache = root / "run", root / "cache"
    recorder = _Recorder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", list(sys.argv))
        mp.setenv("HF_HUB_OFFLINE", "1")
        recorder.install(mp)
        code = egad(*smoke_argv(run_dir, corpus_dir, cache=cache))
    assert code == 0
    assert len(recorder.units) == 1
    return {"run_dir": run_dir, "cache": cache, "unit": recorder.units[0], "corpus": corpus_dir}


def _again(smoke_run, run_dir, *extra) -> int:
    """The smoke_run command again (same corpus and cache), in another run dir, with extra overrides."""
    return egad(*smoke_argv(run_dir, smoke_run["corpus"], *extra, cache=smoke_run["cache"]))


def test_embedded_default_corpus(tmp_path):
    """`egad distill debug=smoke` exactly as documented: the embedded stdlib corpus, no files given."""
    run = tmp_path / "run"
    assert egad("distill", "debug=smoke", f"hydra.run.dir={run}", "trainer.max_steps=1", "eval.before=false") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 1 and math.isfinite(summary["kl_after"])
    assert yaml.safe_load((run / "config.yaml").read_text())["dataset"]["kind"] == "pystdlib"
    assert list((tmp_path / "cache" / "data").glob("pystdlib-*.pt"))  # EGAD_CACHE_DIR is honoured


def test_run_dir_has_every_artifact(smoke_run):
    run = smoke_run["run_dir"]
    # config.yaml: the fully resolved config (no interpolations left)
    text = (run / "config.yaml").read_text()
    assert "${" not in text
    cfg = yaml.safe_load(text)
    assert cfg["method"]["name"] == "egad" and cfg["teacher"]["name"] == "random"
    assert cfg["dataset"]["kind"] == "text" and cfg["trainer"]["max_steps"] == 4
    assert Path(cfg["run_dir"]) == run
    assert Path(cfg["cache_dir"]) == smoke_run["cache"]

    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # debug=smoke: 4 steps, log_every=1
    for r in rows:
        for key in ("step", "loss", "lr", "tokens_per_s", "grad_norm"):
            assert key in r, key
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["tokens_per_s"] > 0 and r["lr"] > 0

    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "egad" and summary["steps"] == 4
    assert summary["tokens"] == 4 * 2 * 32  # steps x batch_size x block_size
    assert math.isfinite(summary["kl_before"]) and math.isfinite(summary["kl_after"])
    assert Path(summary["student_dir"]) == run / "student"

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-4"]  # ckpt_every=2, keep_ckpts=2, no temporary dirs left
    state = load_checkpoint(run / "checkpoints" / "step-4")
    assert state["step"] == 4
    assert set(state) >= {"modules", "optimizer", "scheduler", "rng", "unit"}

    student = run / "student"
    assert (student / "config.json").is_file() and (student / "model.safetensors").is_file()
    assert (student / "tokenizer.json").is_file() or (student / "tokenizer_config.json").is_file()


def test_exported_student_reloads_with_plain_transformers(smoke_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = smoke_run["run_dir"] / "student"
    reloaded = AutoModelForCausalLM.from_pretrained(export).eval()
    tok = AutoTokenizer.from_pretrained(export)
    live = smoke_run["unit"].student.eval()
    assert len(tok) == smoke_run["unit"].vocab
    ids = torch.tensor([tok("def fibonacci(n):\n    return n")["input_ids"]])
    with torch.no_grad():
        want = live(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and the in-process student is the trained one (the final checkpoint's), not its initialisation
    live_state = smoke_run["unit"].student.state_dict()
    ckpt = load_checkpoint(smoke_run["run_dir"] / "checkpoints" / "step-4")["modules"]["train_modules"]
    for name, value in live_state.items():
        torch.testing.assert_close(value, ckpt[f"student.{name}"])


def test_dual_branch_projectors_are_checkpointed_but_not_exported(smoke_run):
    run = smoke_run["run_dir"]
    modules = load_checkpoint(run / "checkpoints" / "step-4")["modules"]["train_modules"]
    projector_keys = [k for k in modules if k.startswith("projectors.")]
    assert projector_keys, "the dual branch's projectors must be in the checkpoint (they are trained)"
    with safe_open(str(run / "student" / "model.safetensors"), framework="pt") as f:
        exported = list(f.keys())
    assert exported and not any("projector" in k for k in exported)
    config = json.loads((run / "student" / "config.json").read_text())
    assert "projector" not in json.dumps(config)


def test_same_command_gives_the_same_losses(smoke_run, tmp_path):
    """Seeded and reproducible (DESIGN §5): a second identical run repeats the loss curve exactly, the dual
    branch's projector initialisation included."""
    assert _again(smoke_run, tmp_path / "again") == 0
    first, again = smoke_run["run_dir"], tmp_path / "again"
    for key in ("loss", "loss_logit", "loss_feature"):
        assert losses_by_step(again, key) == pytest.approx(losses_by_step(first, key), rel=1e-6, abs=1e-7), key


def test_held_out_kl_during_training_leaves_the_training_unchanged(smoke_run, tmp_path):
    """eval.every=2 adds a held-out KL row at step 2 (not at the last step: kl_after is that one), and the
    run trains exactly as without it (the held-out pass touches no RNG and no optimizer state)."""
    run = tmp_path / "every"
    assert _again(smoke_run, run, "eval.every=2") == 0
    rows = read_jsonl(run / "metrics.jsonl")
    kl_rows = [r for r in rows if "heldout_kl" in r]
    assert [r["step"] for r in kl_rows] == [2] and math.isfinite(kl_rows[0]["heldout_kl"]) and kl_rows[0]["heldout_kl"] > 0
    assert losses_by_step(run) == losses_by_step(smoke_run["run_dir"])
    assert json.loads((run / "summary.json").read_text())["final"]["loss"] == losses_by_step(run)[4]


def test_resume_continues_the_same_loss_curve(smoke_run, tmp_path):
    first = smoke_run["run_dir"]  # 4 uninterrupted steps, checkpoints at 2 and 4
    resumed = tmp_path / "resumed"
    assert _again(smoke_run, resumed, "trainer.max_steps=4", f"trainer.resume={first / 'checkpoints' / 'step-2'}") == 0
    want, got = losses_by_step(first), losses_by_step(resumed)
    assert sorted(got) == [1, 2, 3, 4]  # steps 1-2 carried over from the run resumed, then 3-4 trained
    for step in (3, 4):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-6), step
    for key in ("loss_logit", "loss_feature", "lr"):
        assert losses_by_step(resumed, key)[4] == pytest.approx(losses_by_step(first, key)[4], rel=1e-6, abs=1e-7)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["steps"] == 4
    a = load_checkpoint(first / "checkpoints" / "step-4")["modules"]["train_modules"]
    b = load_checkpoint(resumed / "checkpoints" / "step-4")["modules"]["train_modules"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_resume_from_a_run_dir_picks_its_latest_checkpoint(smoke_run, tmp_path):
    """trainer.resume=<run dir>: latest checkpoint is step-4 = max_steps, so nothing is left to train."""
    resumed = tmp_path / "resumed"
    assert _again(smoke_run, resumed, f"trainer.resume={smoke_run['run_dir']}") == 0
    assert losses_by_step(resumed) == losses_by_step(smoke_run["run_dir"])


def test_multirun_makes_one_job_dir_per_value(tmp_path, corpus_dir):
    sweep = tmp_path / "sweep"
    code = egad("distill", "-m", "debug=smoke", "trainer.lr=1e-3,3e-4", f"hydra.sweep.dir={sweep}",
                "trainer.max_steps=2", *text_dataset_args(corpus_dir))
    assert code == 0
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 2, [p.name for p in sweep.iterdir()]
    # each job dir sits directly under the sweep dir, named by its overrides (paths left out: they hold '/')
    assert [j.name.split("_", 1)[0] for j in jobs] == ["0", "1"]
    assert all("trainer.lr:" in j.name and "dataset.paths" not in j.name for j in jobs)
    lrs = []
    for job in jobs:
        assert (job / "summary.json").is_file() and (job / "metrics.jsonl").is_file()
        assert (job / "student" / "config.json").is_file()
        lrs.append(yaml.safe_load((job / "config.yaml").read_text())["trainer"]["lr"])
        assert Path(yaml.safe_load((job / "config.yaml").read_text())["run_dir"]) == job
    assert sorted(lrs) == [3e-4, 1e-3]


def test_text_corpus_run(tmp_path, corpus_dir):
    """dataset=text on local files, a different method, a tokens budget instead of steps."""
    run = tmp_path / "run"
    assert egad(*smoke_argv(run, corpus_dir, "method=kd", "trainer.max_tokens=200", "trainer.export=false")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == math.ceil(200 / (2 * 31))  # batch 2 x (block 32 - 1) valid tokens per step
    assert summary["student_dir"] is None and not (run / "student").exists()
    assert (run / "checkpoints" / f"step-{summary['steps']}" / MANIFEST).is_file()


def test_jsonl_prompt_response_run(tmp_path):
    """dataset=jsonl through argv: prompt/response pairs, loss on responses only, a custom field name."""
    rows = [{"question": f"What is {i} + {i}? ", "response": f"The answer is {2 * i}. " * 3} for i in range(60)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert egad("distill", "debug=smoke", f"hydra.run.dir={run}", "dataset=jsonl", f"dataset.paths=['{data}']",
                "dataset.prompt_field=question", "dataset.val_fraction=0.3", "method=kd", "trainer.max_steps=2") == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["kl_after"])
    assert summary["tokens"] == 2 * 2 * 32


def test_an_occupied_run_dir_is_refused_and_left_untouched(smoke_run, tmp_path, capsys):
    """Re-using a finished run's dir without resuming it must not overwrite its metrics or checkpoints."""
    import shutil

    run = tmp_path / "occupied"
    shutil.copytree(smoke_run["run_dir"], run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and ".hydra" not in p.parts
              and p.name != "distill.log"}
    assert _again(smoke_run, run) == 2
    err = capsys.readouterr().err
    assert "hydra.run.dir" in err and "already holds a run" in err and "trainer.resume" in err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and ".hydra" not in p.parts
             and p.name != "distill.log"}
    assert after == before
    # resuming that same run in its own dir is allowed (the latest checkpoint is the last step: nothing to do)
    assert _again(smoke_run, run, f"trainer.resume={run}") == 0
    assert losses_by_step(run) == losses_by_step(smoke_run["run_dir"])
