"""Every option of every policy group and every method preset composes, validates, builds the unit on tiny
random models and runs a step; the statistics pass computes exactly what the chosen policies declare."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import cpu_runtime, random_packed, text_dataset_args, tiny_models, typed_config

from egad_cli.config import conf_dir
from egad_cli.config.policies import POLICY_REGISTRIES
from egad_cli.engine import distill_unit
from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.normalization import backward
from egad_cli.policies import DIFFICULTY, HELLINGER, student_entropy, teacher_entropy

METHODS = sorted(p.stem for p in (conf_dir() / "method").glob("*.yaml"))
ROLES = {"branch": "routing"}  #: config group -> the unit's policy role, where they differ
POLICY_OPTIONS = [(r.group, name) for r in POLICY_REGISTRIES for name in r.names()]


def build(overrides):
    cfg = typed_config(["debug=smoke", *overrides])
    teacher, student, _, vocab = tiny_models(cfg)
    return DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), total_steps=4), vocab


def one_step(unit, vocab, progress=0.5):
    """plan, loss and backward on two micro-batches (one with a prompt); the finite loss and its logs."""
    micro = []
    for seed in range(2):
        data = random_packed(2, 32, vocab, seed=seed, prompt_lens=[5 * seed, 0])
        micro.append({"ids": data.ids, "mask": data.mask})
    with torch.no_grad():
        plan = unit.plan(micro, progress)
    total = 0.0
    for i in range(len(micro)):
        loss, parts = unit.loss(plan, i)
        backward(loss, unit.runtime)
        total += parts["loss"]
    logs = {**plan.logs, "loss": total, "loss_logit": total}
    logs.update(unit.end_step(1, logs))
    return total, logs


def student_grads(unit):
    return [p.grad for p in unit.student.parameters() if p.grad is not None]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_preset_builds_and_runs_a_step(method):
    unit, vocab = build([f"method={method}"])
    loss, logs = one_step(unit, vocab)
    assert math.isfinite(loss) and loss > 0
    grads = student_grads(unit)
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert all(math.isfinite(v) for v in logs.values())


@pytest.mark.parametrize("group,option", POLICY_OPTIONS, ids=[f"{g}={o}" for g, o in POLICY_OPTIONS])
def test_every_policy_option_builds_and_runs_a_step(group, option):
    extra = []
    if group == "weighting" and option == "adakd":
        extra = ["curriculum=none"]  # adakd selects its own tokens (validate refuses a curriculum with it)
    unit, vocab = build(["method=egad", f"{group}={option}", *extra])
    loss, _ = one_step(unit, vocab)
    assert math.isfinite(loss) and loss > 0
    assert all(torch.isfinite(g).all() for g in student_grads(unit))
    # the config node's torch-free declaration (what validation refuses across tokenizers) says what the policy reads
    node, policy = getattr(unit.cfg, group), unit.policies().get(ROLES.get(group, group))
    if hasattr(node, "one_vocabulary"):
        assert node.one_vocabulary == (HELLINGER in policy.needs), f"{group}={option}"


@pytest.mark.parametrize("method,needs,student_pass", [
    ("kd", set(), False),  # nothing reads a statistic: no statistics pass at all
    ("egad", {DIFFICULTY, teacher_entropy(1.0)}, False),
    ("eakd", {teacher_entropy(2.0), student_entropy(2.0)}, True),
    ("adakd", {HELLINGER}, True),
    # the target-entropy temperature reads the teacher's entropy on its grid; the curriculum and branch at T = 1
    ("egad_target_entropy", {DIFFICULTY, *(teacher_entropy(t) for t in (0.5, 0.7071, 1.0, 1.4142, 2.0))}, False),
])
def test_the_statistics_pass_computes_exactly_what_the_policies_declare(monkeypatch, method, needs, student_pass):
    unit, vocab = build([f"method={method}"])
    assert unit.needs == needs
    calls, student_forwards = [], []
    real_stats = distill_unit.chunked_token_stats
    monkeypatch.setattr(distill_unit, "chunked_token_stats",
                        lambda *a, **kw: calls.append(kw) or real_stats(*a, **kw))
    real_forward = unit.train_modules.forward
    monkeypatch.setattr(unit.train_modules, "forward",
                        lambda *a, **kw: student_forwards.append(1) or real_forward(*a, **kw))
    data = random_packed(2, 32, vocab)
    with torch.no_grad():
        unit.plan([{"ids": data.ids, "mask": data.mask}], 0.5)
    assert bool(student_forwards) == student_pass  # the no-grad student pass runs only when asked for
    if not needs:
        assert calls == []
        return
    (kw,) = calls
    assert set(kw["teacher_entropy_temps"]) == {s.temperature for s in needs if s.kind == "teacher_entropy"}
    assert set(kw["student_entropy_temps"]) == {s.temperature for s in needs if s.kind == "student_entropy"}
    assert kw["hellinger"] == (HELLINGER in needs)


def test_the_loop_skips_the_ddp_all_reduce_on_all_micro_batches_but_the_last(tmp_path, corpus_dir):
    """trainer.grad_accum=3: the unit's no_sync context is entered for micro-batches 0 and 1 of every step."""
    import contextlib

    from egad_cli.data import build_splits
    from egad_cli.engine.loop import train

    cfg = typed_config(["debug=smoke", "method=kd", "trainer.grad_accum=3", "trainer.max_steps=2",
                        *text_dataset_args(corpus_dir)])
    teacher, student, tok, vocab = tiny_models(cfg)
    unit = DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), total_steps=2)
    entered = []

    @contextlib.contextmanager
    def recording_no_sync():
        entered.append(True)
        yield

    unit.no_sync = recording_no_sync
    splits = build_splits(cfg.dataset, tok, tmp_path / "cache")
    (tmp_path / "run").mkdir()
    train(unit, splits.train, cfg.trainer, cpu_runtime(), tmp_path / "run", 2, progress=False)
    assert len(entered) == 2 * 2
