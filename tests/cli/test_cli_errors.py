"""Bad inputs through argv: one clear error naming the key or file, exit status 2, and (where the problem is
knowable up front) nothing expensive done: no model loaded, nothing written to the run dir."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import egad, text_dataset_args

import egad_cli.commands.distill_job as distill_cmd


def squash(text: str) -> str:
    """rich wraps long lines at the console width: compare with all whitespace removed."""
    return re.sub(r"\s+", "", text)


@pytest.fixture
def loads(monkeypatch):
    """Records calls to the distill command's model loading (the first expensive step)."""
    calls = []
    original = distill_cmd.load_models

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(distill_cmd, "load_models", spy)
    return calls


def run_bad(capsys, run_dir: Path, *argv: str) -> tuple[int, str]:
    code = egad("distill", f"hydra.run.dir={run_dir}", *argv)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def assert_cheap_failure(run_dir: Path, loads: list) -> None:
    assert loads == [], "the error must come before any model is loaded"
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()


def test_teacher_hf_without_path(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "teacher=hf")
    assert code == 2
    assert "teacher.path" in err and "error" in err
    assert "Traceback" not in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_teacher_path_that_does_not_exist(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "teacher=hf", "teacher.path=/nonexistent")
    assert code == 2
    assert "teacher.path" in err and "/nonexistent" in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_gguf_teacher_file_that_does_not_exist(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "teacher=gguf", f"teacher.path={tmp_path}/missing.gguf")
    assert code == 2
    assert "teacher.path" in err and "missing.gguf" in squash(err)
    assert_cheap_failure(tmp_path / "run", loads)


def test_student_path_that_does_not_exist(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "student=hf", "student.path=/nonexistent/student")
    assert code == 2
    assert "student.path" in err and "/nonexistent/student" in squash(err)
    assert_cheap_failure(tmp_path / "run", loads)


def test_unknown_group_choice_lists_the_options(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "teacher=nope")
    assert code == 2  # Hydra's own composition error: egad turns its exit status 1 into 2, like every usage error
    assert "teacher/nope" in err
    for option in ("smollm2", "llama", "qwen", "hf", "gguf", "random"):
        assert option in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_negative_lr_names_the_key(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "trainer.lr=-1e-3")
    assert code == 2
    assert "trainer.lr" in err and "-0.001" in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_every_bad_value_is_listed_in_one_error(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "trainer.lr=-1", "trainer.grad_accum=0",
                        "loss.name=kl", "temperature.t_min=3", "branch.q=2", "method.kd_weight=-1")
    assert code == 2
    for key in ("trainer.lr", "trainer.grad_accum", "loss.name", "temperature.t_min", "branch.q", "method.kd_weight"):
        assert key in err, key
    assert err.count("error:") == 1  # one error, listing them all
    assert_cheap_failure(tmp_path / "run", loads)


def test_glob_matching_no_file(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "dataset=text",
                        f"dataset.paths=['{tmp_path}/corpus/*.txt']")
    assert code == 2
    assert "dataset.paths" in err and f"{tmp_path}/corpus/*.txt" in squash(err)
    assert_cheap_failure(tmp_path / "run", loads)


def test_corpus_of_empty_files(capsys, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "empty.txt").write_text("")
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "dataset=text", f"dataset.paths=['{corpus}/*.txt']")
    assert code == 2
    assert "no text" in err and "empty.txt" in squash(err)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_corpus_too_small_for_one_block(capsys, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"{i}.txt").write_text("x = 1\n")
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "dataset=text", f"dataset.paths=['{corpus}/*.txt']",
                        "dataset.val_fraction=0.5")
    assert code == 2
    assert "dataset.block_size" in err or "dataset.val_fraction" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_jsonl_with_missing_fields(capsys, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "2+2=", "response": "4"}) + "\n" +
                    json.dumps({"prompt": "3+3=", "answer": "6"}) + "\n")
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "dataset=jsonl", f"dataset.paths=['{data}']")
    assert code == 2
    flat = squash(err)
    assert f"{data}:2" in flat  # the file and the line
    assert "'response'" in err and "dataset.response_field" in flat
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_jsonl_with_a_line_that_is_not_json(capsys, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n{not json\n")
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "dataset=jsonl", f"dataset.paths=['{data}']")
    assert code == 2
    assert f"{data}:2" in squash(err)


def test_resume_from_a_path_without_checkpoints(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", f"trainer.resume={tmp_path}/nothing-here")
    assert code == 2
    assert "trainer.resume" in err and "nothing-here" in squash(err)
    assert_cheap_failure(tmp_path / "run", loads)


def test_hub_teacher_offline_fails_fast_naming_teacher_path(capsys, tmp_path, loads, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    code, err = run_bad(capsys, tmp_path / "run", "teacher=llama", "student=tiny")
    elapsed = time.perf_counter() - start
    assert code == 2
    assert "teacher.path" in err and "meta-llama/Llama-3.2-1B" in err
    assert elapsed < 5.0, f"offline failure took {elapsed:.1f}s"
    assert_cheap_failure(tmp_path / "run", loads)


def _save_tiny_student(path: Path, extra_tokens: list[str], vocab_rows: int | None = None) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from egad_cli.models.tokenizers import byte_tokenizer

    tok = byte_tokenizer()
    if extra_tokens:
        tok.add_tokens(extra_tokens)
    config = LlamaConfig(vocab_size=vocab_rows or len(tok), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_student_with_another_tokenizer_distils_across_tokenizers(capsys, tmp_path, corpus_dir):
    """A pretrained student of 'another family' (its own tokenizer, two tokens the teacher lacks): a cross-tokenizer
    run, no longer a refusal; its tokenizer is the one in its directory."""
    student = _save_tiny_student(tmp_path / "student", ["<|extra_0|>", "<|extra_1|>"])
    run_dir = tmp_path / "run"
    code = egad("distill", "debug=smoke", *text_dataset_args(corpus_dir), "student=hf", f"student.path={student}",
                "trainer.max_steps=1", f"hydra.run.dir={run_dir}", f"cache_dir={tmp_path / 'c'}")
    assert code == 0, capsys.readouterr().err
    cross = json.loads((run_dir / "summary.json").read_text())["cross_tokenizer"]
    # 256 bytes, EOS and the two extra tokens' strings, which the byte teacher spells with several tokens
    assert cross["student_vocab"] == 259 and cross["shared_strings"] == 257


def test_a_student_with_another_tokenizer_and_a_teacher_cache_is_refused(capsys, tmp_path, corpus_dir):
    student = _save_tiny_student(tmp_path / "student", ["<|extra_0|>", "<|extra_1|>"])
    cache = tmp_path / "tcache"
    assert egad("cache", "debug=smoke", *text_dataset_args(corpus_dir), f"out_dir={cache}",
                f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'log'}") == 0
    capsys.readouterr()
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", *text_dataset_args(corpus_dir),
                        "student=hf", f"student.path={student}", f"teacher_cache={cache}")
    assert code == 2
    assert "tokenizer" in err and "student" in err
    assert "259 vs 257" in err  # the student's and the teacher's token counts
    assert not (tmp_path / "run" / "checkpoints").exists()


# A key of a policy group that only another option of the group has: Hydra's own advice (`+temperature.kappa=…`)
# cannot work (the chosen option would ignore the field); egad names the option(s) that own the key instead.

def test_policy_key_of_another_option_names_the_owner(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "method=egad_no_temperature", "temperature.kappa=0.5")
    assert code == 2
    flat = squash(err)
    assert "temperature=fixed" in err and "temperature=entropy" in err  # what the config has, what owns the key
    assert squash("(temperature=entropy temperature.kappa=0.5)") in flat  # the command line that works
    assert "+temperature.kappa" not in err and "object_type" not in err  # neither Hydra's advice nor its cause
    assert_cheap_failure(tmp_path / "run", loads)


def test_a_key_added_with_plus_to_an_option_without_it_is_refused(capsys, tmp_path, loads):
    """Following Hydra's advice anyway (`+temperature.kappa=0.5` on temperature=fixed) used to run with the value
    silently ignored: it is refused, naming the option that owns the key."""
    code, err = run_bad(capsys, tmp_path / "run", "debug=smoke", "method=egad_no_temperature", "+temperature.kappa=0.5")
    assert code == 2
    assert "temperature.kappa" in err and "temperature=fixed" in err and "temperature=entropy" in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_policy_key_of_another_option_in_other_groups(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "method=kd", "loss.beta=0.3")
    assert code == 2
    assert "loss=forward_kl" in err and "loss=jsd loss.beta=0.3" in err and "+loss.beta" not in err
    code, err = run_bad(capsys, tmp_path / "run", "method=kd", "branch.q=0.2")
    assert code == 2
    assert "branch=logits_only" in err and "branch=dual branch.q=0.2" in err and "+branch.q" not in err
    # several owners: each is named; the curriculum's option field is `schedule`
    code, err = run_bad(capsys, tmp_path / "run", "method=kd", "curriculum.rho=0.4")
    assert code == 2
    assert "curriculum=none" in err and "curriculum=linear curriculum.rho=0.4" in err
    for option in ("cosine", "sqrt", "step"):
        assert option in err
    assert "+curriculum.rho" not in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_unknown_key_of_a_policy_group_lists_the_fields_by_option(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "method=kd", "temperature.kapa=0.5")
    assert code == 2
    assert "temperature.kapa" in err and "temperature=fixed" in err
    assert "kappa" in err  # the near miss
    for line in ("fixed: base, scale", "entropy: base, scale, kappa, t_min, t_max", "idts: base, scale, c, t_min, t_max",
                 "target_entropy: base, scale, target, grid"):
        assert line in err, line
    assert "+temperature.kapa" not in err
    assert_cheap_failure(tmp_path / "run", loads)


def test_policy_key_hint_in_inspect_entropy_and_print_config(capsys, tmp_path):
    code = egad("inspect-entropy", "method=kd", "temperature.kappa=0.5", f"hydra.run.dir={tmp_path / 'run'}")
    err = capsys.readouterr().err
    assert code == 2 and "temperature=entropy temperature.kappa=0.5" in err and "+temperature" not in err
    code = egad("distill", "method=kd", "weighting.r0=0.5", "--cfg", "job")
    err = capsys.readouterr().err
    assert code == 2 and "weighting=adakd weighting.r0=0.5" in err and "+weighting" not in err


def test_other_override_errors_keep_hydras_message(capsys, tmp_path, loads):
    code, err = run_bad(capsys, tmp_path / "run", "trainer.nope=1")  # not a policy group: Hydra's message as before
    assert code == 2
    assert "Could not override 'trainer.nope'" in err
    assert_cheap_failure(tmp_path / "run", loads)
