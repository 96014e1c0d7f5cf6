"""More bad inputs through argv: a clear error naming the key or file, exit status 2, no traceback, and
nothing expensive done when the problem is knowable up front."""

from __future__ import annotations

import json

import pytest
from conftest import egad, smoke_argv, write_corpus
from test_cli_errors import assert_cheap_failure, loads, run_bad  # noqa: F401  (fixture)


def corpus_with(tmp_path, name: str, data: bytes):
    root = write_corpus(tmp_path / "corpus")
    (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("name,data,says", [
    ("a.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 4, "not a text file"),
])
def test_a_binary_file_is_refused_before_loading(capsys, tmp_path, loads, name, data, says):  # noqa: F811
    corpus = corpus_with(tmp_path, name, data)
    code, err = run_bad(capsys, tmp_path / "run", *smoke_argv(tmp_path / "run", corpus)[1:])  # debug=smoke on
    assert code == 2 and says in err and name in err and "Traceback" not in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_a_file_that_is_not_utf8_is_refused(capsys, tmp_path, loads):  # noqa: F811
    corpus = corpus_with(tmp_path, "latin1.txt", "déjà vu, naïve café ".encode("latin-1") * 50)
    code, err = run_bad(capsys, tmp_path / "run", *smoke_argv(tmp_path / "run", corpus)[1:])  # debug=smoke on
    assert code == 2 and "latin1.txt" in err and "not UTF-8" in err and "Traceback" not in err
    assert loads == [], "the corpus is read before the teacher's weights load"


@pytest.mark.parametrize("row", [{"prompt": "p", "response": None}, {"prompt": 3, "response": "r"}])
def test_jsonl_fields_that_are_not_strings_name_file_and_line(capsys, tmp_path, row):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n" + json.dumps(row) + "\n")
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "dataset=jsonl", f"dataset.paths=[{path}]")
    assert code == 2 and "sft.jsonl:2" in err and "not a string" in err and "Traceback" not in err


def test_warmup_longer_than_the_run_is_refused(capsys, tmp_path, loads):  # noqa: F811
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "trainer.warmup_steps=10")
    assert code == 2 and "trainer.warmup_steps" in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_hydra_usage_errors_exit_2(capsys, tmp_path):
    for bad in ("trainer.lr=fast", "trainer.learning_rate=1", "temperature=nope"):
        code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", bad)
        assert code == 2 and bad.split("=")[0].split(".")[-1] in err, bad


def test_a_run_dir_under_a_regular_file_is_an_error(capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    code, err = run_bad(capsys, tmp_path / "afile" / "run", "debug=smoke")
    assert code == 2 and "afile" in err


def test_a_damaged_metrics_file_in_the_resumed_run_names_its_line(capsys, tmp_path, corpus_dir):
    run = tmp_path / "run"
    assert egad(*smoke_argv(run, corpus_dir, "method=kd", "eval.before=false")) == 0
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": \n')
    code = egad(*smoke_argv(tmp_path / "again", corpus_dir, f"trainer.resume={run}", "trainer.max_steps=6"))
    err = capsys.readouterr().err
    assert code == 2 and "metrics.jsonl:5" in err and "Traceback" not in err


def test_a_failed_run_is_not_offered_a_resume_it_cannot_do(capsys, tmp_path, corpus_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    code = egad(*smoke_argv(run, corpus_dir))
    err = capsys.readouterr().err
    assert code == 2 and "already holds a run" in err and "trainer.resume" not in err and "no checkpoint" in err


def test_ctrl_c_while_loading_is_one_line_not_a_traceback(capsys, tmp_path, corpus_dir, monkeypatch):
    import egad_cli.commands.distill_job as job

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "load_models", interrupt)
    code = egad(*smoke_argv(tmp_path / "run", corpus_dir))
    err = capsys.readouterr().err
    assert code == 130 and "interrupted before training started" in err and "Traceback" not in err


def hf_dir_with_garbage_weights(tmp_path):
    """A transformers directory whose model.safetensors is garbage (a truncated or corrupt download)."""
    from conftest import tiny_models, typed_config

    cfg = typed_config(["debug=smoke"])
    teacher, _, tok, _ = tiny_models(cfg)
    path = tmp_path / "teacher"
    teacher.save_pretrained(path)
    tok.save_pretrained(path)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return path


def test_a_teacher_with_garbage_weights_names_the_path(capsys, tmp_path, corpus_dir):
    path = hf_dir_with_garbage_weights(tmp_path)
    code = egad(*smoke_argv(tmp_path / "run", corpus_dir, "teacher=hf", f"teacher.path={path}"))
    err = capsys.readouterr().err
    assert code == 2 and "teacher.path" in err and "Traceback" not in err


def test_a_file_that_is_not_gguf_is_refused(capsys, tmp_path, corpus_dir):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"this is not a gguf file" * 100)
    code = egad(*smoke_argv(tmp_path / "run", corpus_dir, "teacher=gguf", f"teacher.path={fake}"))
    err = capsys.readouterr().err
    assert code == 2 and "teacher.path" in err and "GGUF" in err and "Traceback" not in err


def test_a_model_path_that_is_a_file_says_so(capsys, tmp_path, loads):  # noqa: F811
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"x")
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "teacher=hf", f"teacher.path={weights}")
    assert code == 2 and "is a file" in err and "teacher=gguf" in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_remote_code_is_refused_with_the_key_that_allows_it(capsys, tmp_path, corpus_dir):
    path = tmp_path / "custom"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "egad-custom-model",
                                                  "auto_map": {"AutoConfig": "modeling.CustomConfig",
                                                               "AutoTokenizer": ["modeling.CustomTokenizer", None],
                                                               "AutoModelForCausalLM": "modeling.CustomModel"}}))
    (path / "modeling.py").write_text("raise SystemExit('remote code ran')\n")
    code = egad(*smoke_argv(tmp_path / "run", corpus_dir, "teacher=hf", f"teacher.path={path}"))
    err = capsys.readouterr().err
    assert code == 2 and "teacher.trust_remote_code=true" in err and "remote code ran" not in err


def test_blocks_longer_than_the_models_positions_are_refused(capsys, tmp_path, loads):  # noqa: F811
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "dataset.block_size=1024")
    assert code == 2 and "dataset.block_size" in err and "max_position_embeddings" in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_an_unwritable_cache_dir_is_refused_before_loading(capsys, tmp_path, loads):  # noqa: F811
    (tmp_path / "afile").write_text("")
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", f"cache_dir={tmp_path / 'afile' / 'cache'}")
    assert code == 2 and "cache_dir" in err
    assert loads == []


def test_resume_totals_cover_the_whole_run(tmp_path, corpus_dir):
    first = tmp_path / "first"
    assert egad(*smoke_argv(first, corpus_dir, "method=kd", "eval.before=false")) == 0
    again = tmp_path / "again"
    assert egad("distill", f"trainer.resume={first / 'checkpoints' / 'step-2'}", f"hydra.run.dir={again}") == 0
    a, b = (json.loads((d / "summary.json").read_text()) for d in (first, again))
    assert b["tokens"] == a["tokens"] and b["train_seconds"] > 0 and b["final"]["loss"] == pytest.approx(a["final"]["loss"])
    finished = tmp_path / "finished"  # resuming a finished run: nothing to train, the totals stay
    assert egad("distill", f"trainer.resume={first}", f"hydra.run.dir={finished}") == 0
    c = json.loads((finished / "summary.json").read_text())
    assert c["tokens"] == a["tokens"] and c["final"]["loss"] == pytest.approx(a["final"]["loss"])


def test_a_bare_checkpoint_of_another_architecture_is_refused(capsys, tmp_path, corpus_dir):
    run = tmp_path / "run"
    assert egad(*smoke_argv(run, corpus_dir, "method=kd", "eval.before=false")) == 0
    (run / "config.yaml").unlink()  # a checkpoint without its run's config: the command line describes the run
    code = egad(*smoke_argv(tmp_path / "other", corpus_dir, "method=kd", "student.arch.hidden_size=48",
                            f"trainer.resume={run / 'checkpoints' / 'step-2'}"))
    err = capsys.readouterr().err
    assert code == 2 and "does not fit" in err and "Traceback" not in err


def test_generation_past_the_models_positions_is_refused(capsys, tmp_path):
    code = egad("eval", "debug=smoke", "eval.max_new_tokens=4000", f"hydra.run.dir={tmp_path}")
    err = capsys.readouterr().err
    assert code == 2 and "eval.max_new_tokens" in err and "max_position_embeddings" in err
