"""Students and the shared vocabulary: from_teacher layer subsets, padded vocabularies, tokenizer mismatches,
model references that are not there."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cpu_runtime, egad, smoke_argv, tiny_models, typed_config
from transformers import LlamaConfig, LlamaForCausalLM

from egad_cli.config.schema import ArchConfig, StudentConfig, TeacherConfig
from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.errors import UserError
from egad_cli.models import build_student, check_shared_vocab, load_teacher
from egad_cli.models.hub import resolve_model_ref
from egad_cli.models.students import evenly_spaced
from egad_cli.models.tokenizers import byte_tokenizer

ARCH4 = ArchConfig(hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=2, intermediate_size=64,
                   max_position_embeddings=256)


@pytest.fixture(scope="module")
def teacher4():
    """A 4-layer random teacher with the byte tokenizer."""
    return load_teacher(TeacherConfig(name="random", source="random", seed=5, arch=ARCH4), None, torch.float32)


def ids(tok, text="def add(a, b):\n    return a + b\n"):
    return torch.tensor([tok(text)["input_ids"]])


@pytest.mark.parametrize("keep,total,expected", [(2, 4, [0, 3]), (4, 4, [0, 1, 2, 3]), (1, 4, [3]),
                                                  (3, 7, [0, 3, 6]), (4, 30, [0, 10, 19, 29])])
def test_evenly_spaced(keep, total, expected):
    got = evenly_spaced(keep, total)
    assert got == expected
    assert len(got) == keep and got[-1] == total - 1


def test_from_teacher_keeps_evenly_spaced_layers(teacher4):
    teacher, tok = teacher4
    student, s_tok = build_student(StudentConfig(name="from_teacher", init="from_teacher", num_layers=2), teacher, tok)
    assert s_tok is tok
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for new, old in ((0, 0), (1, 3)):  # layers 0 and 3 of 4
        for key, value in s_state.items():
            if key.startswith(f"model.layers.{new}."):
                src = key.replace(f"model.layers.{new}.", f"model.layers.{old}.")
                assert torch.equal(value, t_state[src]), key
    for key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(s_state[key], t_state[key])
    # a copy, not shared storage: training the student must not change the teacher
    assert s_state["model.embed_tokens.weight"].data_ptr() != t_state["model.embed_tokens.weight"].data_ptr()


def test_from_teacher_with_all_layers_equals_the_teacher(teacher4):
    teacher, tok = teacher4
    student, _ = build_student(StudentConfig(name="from_teacher", init="from_teacher", num_layers=4), teacher, tok)
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids=ids(tok)).logits, teacher(input_ids=ids(tok)).logits,
                                   rtol=0, atol=0)


def test_from_teacher_with_too_many_layers_names_the_key(teacher4):
    teacher, tok = teacher4
    with pytest.raises(UserError) as err:
        build_student(StudentConfig(name="from_teacher", init="from_teacher", num_layers=5), teacher, tok)
    assert "student.num_layers" in str(err.value)


def test_random_teacher_and_scratch_student_are_seeded_and_use_the_teacher_vocab():
    torch.manual_seed(0)
    a, tok = load_teacher(TeacherConfig(name="random", source="random", arch=ARCH4), None, torch.float32)
    torch.manual_seed(1)
    b, _ = load_teacher(TeacherConfig(name="random", source="random", arch=ARCH4), None, torch.float32)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    student, s_tok = build_student(StudentConfig(name="tiny", arch=ArchConfig(hidden_size=32, num_layers=2,
                                                                               num_heads=2, num_kv_heads=2,
                                                                               intermediate_size=64)), a, tok)
    assert student.get_output_embeddings().weight.shape[0] == len(tok) == 257
    assert s_tok is tok


def test_scratch_student_seed_follows_the_run_seed_unless_set():
    """student.seed null: the init follows default_seed (distill passes trainer.seed); set: it wins."""
    teacher, tok = load_teacher(TeacherConfig(name="random", source="random", arch=ARCH4), None, torch.float32)
    arch = ArchConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64)

    def weights(seed, default_seed):
        student, _ = build_student(StudentConfig(name="tiny", arch=arch, seed=seed), teacher, tok, default_seed)
        return student.get_input_embeddings().weight

    assert torch.equal(weights(None, 3), weights(None, 3))
    assert not torch.equal(weights(None, 3), weights(None, 4))
    assert torch.equal(weights(7, 3), weights(7, 4))
    assert torch.equal(weights(None, 7), weights(7, 0))


def padded_student(rows: int) -> LlamaForCausalLM:
    eos = byte_tokenizer().eos_token_id if rows > 256 else None  # (a truncated head cannot hold the EOS id)
    return LlamaForCausalLM(LlamaConfig(vocab_size=rows, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                                        eos_token_id=eos, pad_token_id=eos, bos_token_id=eos))


def test_padded_vocabulary_is_accepted_and_sliced_to_the_tokenizer(teacher4):
    teacher, tok = teacher4
    student = padded_student(264)  # embedding rows rounded up to a multiple of 8
    assert check_shared_vocab(teacher, student, tok, byte_tokenizer()) == len(tok) == 257
    cfg = typed_config(["debug=smoke", "method=egad"])
    unit = DistillUnit(teacher, student, len(tok), cfg, cpu_runtime(), 2)
    assert unit.head(unit.student).shape == (257, 32)
    assert unit.head(unit.teacher).shape == (257, 32)


def test_fewer_lm_head_rows_than_tokens_is_refused(teacher4):
    teacher, tok = teacher4
    with pytest.raises(UserError) as err:
        check_shared_vocab(teacher, padded_student(200), tok, byte_tokenizer())
    assert "200 rows" in str(err.value) and "257 tokens" in str(err.value)


def test_different_tokenizers_are_refused(teacher4):
    teacher, tok = teacher4
    other = byte_tokenizer()
    other.add_tokens(["<|extra|>"])
    with pytest.raises(UserError) as err:
        check_shared_vocab(teacher, padded_student(264), tok, other)
    assert "tokenizer" in str(err.value) and "258 vs 257" in str(err.value)


def test_padded_hf_student_distills_end_to_end(tmp_path, corpus_dir):
    """student=hf pointing at a saved student whose embeddings are padded: runs, and the export keeps its rows."""
    src = tmp_path / "padded"
    padded_student(264).save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    run = tmp_path / "run"
    assert egad(*smoke_argv(run, corpus_dir, "student=hf", f"student.path={src}", "trainer.max_steps=2")) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    for row in [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]:
        assert torch.isfinite(torch.tensor(row["loss"]))
    assert json.loads((run / "student" / "config.json").read_text())["vocab_size"] == 264


def test_tiny_models_helper_shares_one_vocabulary():
    teacher, student, tok, vocab = tiny_models(typed_config(["debug=smoke"]))
    assert vocab == len(tok) == teacher.config.vocab_size == student.config.vocab_size


def test_model_reference_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        resolve_model_ref(str(tmp_path / "missing"), "teacher.path")
    assert "teacher.path" in str(err.value) and "does not exist" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as err:
        resolve_model_ref(str(tmp_path / "empty"), "student.path")
    assert "student.path" in str(err.value) and "config.json" in str(err.value)
    with pytest.raises(UserError) as err:
        resolve_model_ref("some-org/some-model-that-is-not-cached", "teacher.path")
    assert "teacher.path" in str(err.value) and "huggingface-cli download" in str(err.value)
    padded_student(264).save_pretrained(tmp_path / "ok")
    assert resolve_model_ref(str(tmp_path / "ok"), "student.path") == str(tmp_path / "ok")
