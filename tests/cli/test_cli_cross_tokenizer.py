"""Cross-tokenizer distillation end to end through argv (debug=smoke: a random byte-tokenizer teacher, a tiny student
with a BPE trained on the corpus), the eval of such a run, and each refusal."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import egad, read_jsonl, smoke_argv, text_dataset_args

VOCAB = 320  #: the smoke student's BPE: 256 bytes, EOS and 63 merges


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory, corpus_dir):
    """One `egad distill debug=smoke student.tokenizer=train method=egad` (dual branch), then `egad eval` of it."""
    root = tmp_path_factory.mktemp("cross")
    run_dir, cache = root / "run", root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", list(sys.argv))
        mp.setenv("HF_HUB_OFFLINE", "1")
        code = egad(*smoke_argv(run_dir, corpus_dir, "student.tokenizer=train",
                                f"student.tokenizer_vocab_size={VOCAB}", "method=egad", "trainer.ckpt_every=0",
                                cache=cache))
        assert code == 0
        eval_code = egad("eval", f"run_dir={run_dir}", "debug=smoke", f"cache_dir={cache}")
    return {"run_dir": run_dir, "cache": cache, "corpus": corpus_dir, "eval_code": eval_code}


def test_distill_trains_a_student_with_its_own_tokenizer(cross_run):
    run_dir = cross_run["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    cross = summary["cross_tokenizer"]
    assert cross["student_vocab"] == VOCAB
    assert 0 < cross["shared_strings"] <= 257  # the byte teacher's strings are single bytes and EOS
    assert 0.3 <= cross["aligned_share_train"] <= 1
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss_mapped" in r]
    assert rows and all(0 < r["aligned_frac"] <= 1 for r in rows)
    assert all(r["loss_uld"] >= 0 and r["loss_mapped"] > 0 for r in rows)
    assert summary["kl_after"] < summary["kl_before"]  # the aligned KL falls in 4 steps at this learning rate
    # the exported student carries its own tokenizer, and plain transformers loads both
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "student")
    model = AutoModelForCausalLM.from_pretrained(run_dir / "student")
    assert len(tok) == VOCAB == model.get_output_embeddings().weight.shape[0]
    text = "def f(x):\n    return x  # naïve\n"
    assert tok.decode(tok(text)["input_ids"]) == text
    # the tokenizer was trained once, into the cache
    assert len(list((cross_run["cache"] / "tokenizers").glob(f"bpe{VOCAB}-*/tokenizer.json"))) == 1


def test_eval_compares_across_tokenizers(cross_run):
    assert cross_run["eval_code"] == 0
    result = json.loads((cross_run["run_dir"] / "eval.json").read_text())
    for key in ("bits_per_byte_student", "bits_per_byte_teacher", "kl_forward", "top1_agreement", "aligned_share"):
        assert result[key] == result[key] and result[key] >= 0, key  # a number, not nan
    assert 0 < result["aligned_share"] <= 1
    assert result["bits_per_byte_student"] > 0 and result["bits_per_byte_teacher"] > 0
    assert len(result["by_entropy_decile"]) == 10
    assert result["generations"] == []


def test_same_tokenizer_eval_reports_bits_per_byte_and_both_kinds_sit_in_one_report(cross_run, capsys):
    root, cache = cross_run["run_dir"].parent, cross_run["cache"]
    run_dir = root / "same"
    assert egad(*smoke_argv(run_dir, cross_run["corpus"], "method=kd", "trainer.max_steps=1", cache=cache)) == 0
    assert egad("eval", f"run_dir={run_dir}", "debug=smoke", f"cache_dir={cache}") == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert 0 < result["bits_per_byte_teacher"] and 0 < result["bits_per_byte_student"]
    assert "aligned_share" not in result
    capsys.readouterr()
    assert egad("report", f"sweep_dir={root}", f"out_dir={root / 'report'}", "plots=false") == 0
    import csv

    with (root / "report" / "report.csv").open() as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"run", "same"}
    for job in rows.values():  # one column, both kinds of run
        assert float(job["eval.bits_per_byte_student"]) > 0


def test_ce_baseline_on_the_students_tokens(tmp_path, corpus_dir):
    """method=ce with the student's own tokenizer: the baseline a user without the feature has (no teacher pass)."""
    run_dir = tmp_path / "run"
    code = egad(*smoke_argv(run_dir, corpus_dir, "student.tokenizer=train", f"student.tokenizer_vocab_size={VOCAB}",
                            "method=ce", "trainer.max_steps=2", cache=tmp_path / "c"))
    assert code == 0
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss_ce" in r]
    assert rows and all(r["loss_ce"] > 0 and r["loss_mapped"] == 0 for r in rows)


@pytest.mark.parametrize("extra, key", [
    (["onpolicy.lmbda=0.5"], "onpolicy.lmbda"),
    (["student.tokenizer_vocab_size=10"], "student.tokenizer_vocab_size"),
    (["method=adakd"], "method=adakd"),
    (["cross.uld_weight=-1"], "cross.uld_weight"),
])
def test_refusals_name_the_key(tmp_path, corpus_dir, capsys, extra, key):
    """Each is a config problem: refused before the student's BPE is trained or the corpus packed (minutes on a
    real corpus), so nothing lands in cache_dir."""
    run_dir = tmp_path / "run"
    code = egad(*smoke_argv(run_dir, corpus_dir, "student.tokenizer=train", f"student.tokenizer_vocab_size={VOCAB}",
                            *extra, cache=tmp_path / "c"))
    out = capsys.readouterr()
    assert code == 2
    assert key in out.out + out.err
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "student").exists()
    assert not (tmp_path / "c" / "tokenizers").exists() and not (tmp_path / "c" / "data").exists()


@pytest.mark.parametrize("extra, key", [(["onpolicy.lmbda=0.5"], "onpolicy.lmbda"), (["method=adakd"], "weighting=adakd"),
                                        (["method=kd", "temperature=idts"], "temperature=idts")])
def test_a_pretrained_student_of_another_family_is_refused_before_packing(tmp_path, corpus_dir, capsys, extra, key):
    """student=hf whose directory ships another tokenizer: the run is cross-tokenizer, which only reading that
    tokenizer tells; what such a run cannot do is refused right then, before the corpus is packed or weights load."""
    from test_cli_errors import _save_tiny_student

    student = _save_tiny_student(tmp_path / "student", ["<|extra_0|>", "<|extra_1|>"])
    run_dir = tmp_path / "run"
    code = egad(*smoke_argv(run_dir, corpus_dir, "student=hf", f"student.path={student}", *extra, cache=tmp_path / "c"))
    err = capsys.readouterr().err
    assert code == 2 and key in err and f"student.path={student}" in err
    assert not (tmp_path / "c" / "data").exists() and not (run_dir / "metrics.jsonl").exists()


def test_a_teacher_cache_is_refused_for_a_cross_tokenizer_run(tmp_path, corpus_dir, capsys):
    cache = tmp_path / "tcache"
    assert egad("cache", "debug=smoke", *text_dataset_args(corpus_dir), f"out_dir={cache}",
                f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'log'}") == 0
    capsys.readouterr()
    run_dir = tmp_path / "run"
    code = egad(*smoke_argv(run_dir, corpus_dir, "student.tokenizer=train", f"teacher_cache={cache}",
                            cache=tmp_path / "c"))
    err = capsys.readouterr().err
    assert code == 2 and "student.tokenizer" in err and "drop teacher_cache" in err
    assert not (run_dir / "metrics.jsonl").exists()


def test_a_missing_tokenizer_path_is_refused(tmp_path, corpus_dir, capsys):
    code = egad(*smoke_argv(tmp_path / "run", corpus_dir, f"student.tokenizer={tmp_path / 'nope'}",
                            cache=tmp_path / "c"))
    out = capsys.readouterr()
    assert code == 2 and "student.tokenizer" in out.out + out.err


def test_the_teachers_own_tokenizer_is_not_cross(tmp_path, corpus_dir):
    """student.tokenizer pointing at a copy of the teacher's tokenizer: the ordinary same-vocabulary run."""
    from egad_cli.models.tokenizers import byte_tokenizer

    byte_tokenizer().save_pretrained(tmp_path / "tok")
    run_dir = tmp_path / "run"
    assert egad(*smoke_argv(run_dir, corpus_dir, f"student.tokenizer={tmp_path / 'tok'}", "trainer.max_steps=1",
                            cache=tmp_path / "c")) == 0
    assert "cross_tokenizer" not in json.loads((run_dir / "summary.json").read_text())


def test_a_student_tokenizer_that_loses_text_is_refused_before_training(tmp_path, corpus_dir, capsys):
    """A lowercasing tokenizer directory: refused when the corpus is packed, naming the key, before any weights."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from egad_cli.models.tokenizers import EOS

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["Some Text"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOS], show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS).save_pretrained(tmp_path / "lower")
    run_dir = tmp_path / "run"
    code = egad(*smoke_argv(run_dir, corpus_dir, f"student.tokenizer={tmp_path / 'lower'}", cache=tmp_path / "c"))
    err = capsys.readouterr().err
    assert code == 2 and "student.tokenizer: the tokenizer does not give back the text it encoded" in err
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "student").exists()
