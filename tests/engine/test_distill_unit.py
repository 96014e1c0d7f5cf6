"""The distillation unit on tiny in-process models: masked tokens carry no loss, a fully masked batch gives 0 and
no NaN, the dual branch's projectors are seeded from the config, the loss mix matches its parts."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import cpu_runtime, random_packed, tiny_models, typed_config

from egad_cli.engine.distill_unit import DistillUnit


def make_unit(overrides, total_steps=10):
    cfg = typed_config(["debug=smoke", *overrides])
    teacher, student, _, vocab = tiny_models(cfg)
    return DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), total_steps), vocab


def batch(vocab, prompt_lens, block=32, seed=0):
    data = random_packed(len(prompt_lens), block, vocab, seed=seed, prompt_lens=prompt_lens)
    return {"ids": data.ids, "mask": data.mask}


@pytest.mark.parametrize("method", ["kd", "egad", "eakd", "adakd", "ce"])
def test_prompt_tokens_get_no_loss(method):
    unit, vocab = make_unit([f"method={method}", "method.ce_weight=0.5"] if method != "ce" else ["method=ce"])
    mb = batch(vocab, [10, 0, 31, 5])
    plan = unit.plan([mb], 0.5)
    mp = plan.micro[0]
    valid = mb["mask"][:, 1:].reshape(-1)  # position t predicts token t+1: a loss token iff t+1 is a response token
    assert torch.equal(mp.valid, valid)
    assert torch.all(mp.w[~valid] == 0)
    if method != "ce":
        assert (mp.w[valid] > 0).any()
    if unit.features:
        assert valid[mp.hard_idx].all()  # hard tokens are response tokens only
    # the loss does not depend on what the prompt tokens are predicted to be: change the targets at masked
    # positions (their labels), the loss is unchanged
    loss, _ = unit.loss(plan, 0)
    mp.targets = torch.where(valid, mp.targets, (mp.targets + 1) % vocab)
    loss2, _ = unit.loss(plan, 0)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("method", ["kd", "egad", "ce"])
def test_fully_masked_batch_gives_zero_and_no_nan(method):
    unit, vocab = make_unit([f"method={method}"])
    mb = batch(vocab, [32, 32])  # every token is prompt
    plan = unit.plan([mb], 0.0)
    loss, parts = unit.loss(plan, 0)
    loss.backward()
    assert loss.item() == 0.0
    for name, p in unit.train_modules.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all() and p.grad.abs().max() == 0, name
    assert all(math.isfinite(v) for v in parts.values())  # no NaN in the logged parts


def test_loss_is_the_sum_of_its_logged_parts():
    unit, vocab = make_unit(["method=egad", "method.ce_weight=0.3"])
    plan = unit.plan([batch(vocab, [3, 0])], 0.9)
    loss, parts = unit.loss(plan, 0)
    assert parts["loss_logit"] > 0 and parts["loss_feature"] > 0 and parts["loss_ce"] > 0
    # loss = kd_weight · (L_logit + μ · L_feature) + α · L_ce, with the logged (normalised) terms
    mix = 1.0 * (parts["loss_logit"] + 1.0 * parts["loss_feature"]) + 0.3 * parts["loss_ce"]
    assert loss.item() == pytest.approx(mix, rel=1e-6)
    assert {"tau_mean", "weight_mean", "hard_frac", "entropy_mean"} <= set(parts)


def test_projectors_are_seeded_from_the_config_not_the_global_rng():
    torch.manual_seed(1)
    a, _ = make_unit(["method=egad"])
    torch.manual_seed(2)
    b, _ = make_unit(["method=egad"])
    pa, pb = a.train_modules.projectors.state_dict(), b.train_modules.projectors.state_dict()
    assert pa.keys() == pb.keys() and pa
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    c, _ = make_unit(["method=egad", "trainer.seed=7"])
    assert not torch.equal(c.train_modules.projectors.state_dict()[k], pa[k])


def test_only_the_dual_branch_has_projectors_and_they_get_their_lr_multiplier():
    kd, _ = make_unit(["method=kd"])
    assert kd.train_modules.projectors is None
    egad, _ = make_unit(["method=egad", "branch.projector_lr_mult=5"])
    mults = {n: m for n, _, m in egad.named_trainable()}
    assert any(n.startswith("projectors.") for n in mults)
    assert all(m == (5.0 if n.startswith("projectors.") else 1.0) for n, m in mults.items())
    # the exported model is the student alone
    assert not any("projector" in k for k in egad.student.state_dict())


def test_teacher_gets_no_gradient():
    unit, vocab = make_unit(["method=egad"])
    plan = unit.plan([batch(vocab, [0, 4])], 0.3)
    loss, _ = unit.loss(plan, 0)
    loss.backward()
    assert all(p.grad is None for p in unit.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in unit.student.parameters())
