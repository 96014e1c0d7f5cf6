"""The distillation unit's cross-tokenizer path, with one tokenizer on both sides: every position aligns and the
map pairs each id with itself, so the step (plan, loss, gradients) must be the same-tokenizer step to 1e-6."""

from __future__ import annotations

import pytest
import torch
from conftest import cpu_runtime, random_packed, tiny_models, typed_config

from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.losses.cross_vocab import VocabMap

# fp32 models and losses, the same math in another order (buckets, gathered rows): a few ulp per term
TOL = {"rtol": 1e-6, "atol": 1e-6}


def _units(overrides, identity: bool):
    cfg = typed_config(["debug=smoke", *overrides])
    same = DistillUnit(*_models(cfg), cfg, cpu_runtime(), 10)
    teacher, student, vocab = _models(cfg)  # the same seeds: the same weights
    ids = torch.arange(vocab)
    # identity=False takes the general path (buckets, ULD) with a map that happens to pair each id with itself
    vmap = VocabMap(ids, ids.clone(), vocab, vocab, identity=identity)
    cross = DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), 10, vmap=vmap)
    return same, cross, vocab


def _models(cfg):
    teacher, student, _, vocab = tiny_models(cfg)
    return teacher, student, vocab


def _cross_batch(mb: dict) -> dict:
    """What pack_pair gives for one tokenizer: the teacher's tokens are the student's, position j pairs with j."""
    valid = mb["mask"][:, 1:]
    j = torch.arange(valid.shape[1]).expand_as(valid)
    return {**mb, "t_ids": mb["ids"], "t_mask": mb["mask"], "t_index": torch.where(valid, j, -1)}


@pytest.mark.parametrize("identity", [True, False])
@pytest.mark.parametrize("overrides", [["method=kd"], ["method=egad", "method.ce_weight=0.3"],
                                       ["method=kd", "loss=jsd", "temperature=entropy"]],
                         ids=["kd", "egad_ce", "jsd_entropy_temperature"])
def test_one_tokenizer_through_the_cross_path_is_the_same_step(overrides, identity):
    same, cross, vocab = _units(overrides, identity)
    data = random_packed(3, 24, vocab, seed=1, prompt_lens=[5, 0, 23])
    mb = {"ids": data.ids, "mask": data.mask}
    plan_a, plan_b = same.plan([mb], 0.6), cross.plan([_cross_batch(mb)], 0.6)
    a, b = plan_a.micro[0], plan_b.micro[0]
    assert torch.equal(b.valid, a.valid) and torch.equal(b.s_valid, a.valid)  # every loss position is aligned
    torch.testing.assert_close(b.w, a.w, **TOL)
    torch.testing.assert_close(b.tau, a.tau, **TOL)
    assert torch.equal(b.hard_idx, a.hard_idx)
    loss_a, parts_a = same.loss(plan_a, 0)
    loss_b, parts_b = cross.loss(plan_b, 0)
    torch.testing.assert_close(loss_b, loss_a, **TOL)
    assert parts_b["loss_uld"] == 0.0 and parts_b["aligned_frac"] == 1.0
    for key in ("loss_logit", "loss_feature", "loss_ce"):
        assert parts_b[key] == pytest.approx(parts_a[key], rel=1e-6, abs=1e-6), key
    loss_a.backward()
    loss_b.backward()
    grads_a = dict(same.train_modules.named_parameters())
    for name, p in cross.train_modules.named_parameters():
        q = grads_a[name]
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)


def test_eakd_normalises_the_student_entropy_by_the_student_vocabulary():
    """EA-KD's w = ½ H^T (1 + H^S / log|V|): in a cross run H^S is over the student's vocabulary, so |V| is the
    student's, not the teacher's (here the student's head is sliced to 9 fewer rows than the teacher's)."""
    cfg = typed_config(["debug=smoke", "method=eakd"])
    teacher, student, vocab = _models(cfg)
    s_vocab = vocab - 9
    ids = torch.arange(s_vocab)
    unit = DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), 10, vmap=VocabMap(ids, ids.clone(), vocab, s_vocab))
    data = random_packed(2, 16, s_vocab, seed=2)
    mb = _cross_batch({"ids": data.ids, "mask": data.mask})
    w = unit.plan([mb], 0.5).micro[0].w  # [N] one row per student position
    with torch.no_grad():
        t_logits = teacher(data.ids).logits[:, :-1, :vocab].reshape(-1, vocab)  # [N, V]
        s_logits = student(data.ids).logits[:, :-1, :s_vocab].reshape(-1, s_vocab)  # [N, Vs]
    t_T = cfg.weighting.temperature

    def entropy(logits):
        logp = torch.log_softmax(logits.double() / t_T, -1)
        return -(logp.exp() * logp).sum(-1)

    want = 0.5 * entropy(t_logits) * (1 + entropy(s_logits) / torch.log(torch.tensor(float(s_vocab))).double())
    torch.testing.assert_close(w.double(), want, rtol=1e-5, atol=1e-6)
