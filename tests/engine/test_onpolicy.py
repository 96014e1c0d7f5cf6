"""On-policy mode in the unit: which sequences are sampled, how a sampled block is laid out, λ = 0 is the
off-policy path bit for bit, with λ = 1 only sampled tokens carry loss, sampling is seeded."""

from __future__ import annotations

import pytest
import torch
from conftest import cpu_runtime, random_packed, tiny_models, typed_config

from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.onpolicy import build_rollout, onpolicy_rows, sampled_blocks

BLOCK = 32  # debug=smoke's block size: prompts of 16 tokens, up to 16 sampled


def setup(overrides, n_blocks=8, seed=0):
    cfg = typed_config(["debug=smoke", *overrides])
    teacher, student, tok, vocab = tiny_models(cfg)
    data = random_packed(n_blocks, BLOCK, vocab, seed=seed)
    return cfg, teacher, student, tok, vocab, data


def batch(data, seq, rows=None):
    rows = list(range(len(seq))) if rows is None else rows
    return {"ids": data.ids[rows].clone(), "mask": data.mask[rows].clone(), "seq": torch.tensor(seq)}


@pytest.mark.parametrize("lmbda,n", [(0.0, 0), (1.0, 100), (0.5, 50), (0.3, 30), (0.25, 25)])
def test_a_share_lambda_of_the_sequences_spread_evenly(lmbda, n):
    rows = onpolicy_rows(torch.arange(100), lmbda)
    assert int(rows.sum()) == n
    # evenly: every prefix of k sequences holds kλ of them, to within one
    assert ((rows.cumsum(0) - torch.arange(1, 101) * lmbda).abs() < 1).all()


def test_a_sampled_block_is_prompt_then_continuation_then_padding_with_loss_on_the_continuation():
    ids, mask = sampled_blocks([torch.tensor([5, 6, 7]), torch.tensor([9])], [torch.tensor([1, 2]), torch.tensor([3])],
                               6, pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 1, 2, 0], [9, 3, 0, 0, 0, 0]]
    assert mask.tolist() == [[False, False, False, True, True, False], [False, True, False, False, False, False]]


def test_rollout_rewrites_exactly_the_onpolicy_rows_and_is_seeded():
    cfg, _, student, tok, _, data = setup(["onpolicy.lmbda=0.5"])
    rollout = build_rollout(cfg.onpolicy, student, tok, data, BLOCK, seed=7)
    mb = batch(data, [0, 1, 2, 3])
    out, on, log = rollout(mb)
    assert on.tolist() == [False, True, False, True]
    for r in (0, 2):  # off-policy rows: the data, untouched
        assert torch.equal(out["ids"][r], mb["ids"][r]) and torch.equal(out["mask"][r], mb["mask"][r])
    for r in (1, 3):
        assert torch.equal(out["ids"][r, :16], mb["ids"][r, :16])  # the prompt: the block's first 16 tokens
        assert not out["mask"][r, :16].any()  # ...carries no loss
        n_new = int(out["mask"][r].sum())
        assert 1 <= n_new <= 16 and out["mask"][r, 16: 16 + n_new].all() and not out["mask"][r, 16 + n_new:].any()
    assert log.sequences == 2 and log.new_tokens == int(out["mask"][[1, 3]].sum())
    again, _, _ = build_rollout(cfg.onpolicy, student, tok, data, BLOCK, seed=7)(mb)
    other, _, _ = build_rollout(cfg.onpolicy, student, tok, data, BLOCK, seed=8)(mb)
    assert torch.equal(again["ids"], out["ids"])  # the same seed samples the same tokens
    assert not torch.equal(other["ids"], out["ids"])
    assert torch.equal(mb["ids"], data.ids[:4])  # the caller's batch is not modified


@pytest.mark.parametrize("method", ["kd", "egad", "adakd"])
def test_lambda_zero_is_the_off_policy_path_bit_for_bit(method):
    cfg, teacher, student, tok, vocab, data = setup([f"method={method}", "onpolicy.lmbda=0"])
    off = DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), 10)
    plan = off.plan([batch(data, [0, 1, 2, 3])], 0.3)
    want, _ = off.loss(plan, 0)
    rollout = build_rollout(cfg.onpolicy, student, tok, data, BLOCK, seed=0)
    on = DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), 10, rollout=rollout)
    plan = on.plan([batch(data, [0, 1, 2, 3])], 0.3)
    got, parts = on.loss(plan, 0)
    assert torch.equal(got, want)
    assert parts["onpolicy_frac"] == 0.0


@pytest.mark.parametrize("method", ["onpolicy", "egad", "gkd"])
def test_with_lambda_one_only_sampled_tokens_carry_loss(method):
    cfg, teacher, student, tok, vocab, data = setup([f"method={method}", "onpolicy.lmbda=1"])
    rollout = build_rollout(cfg.onpolicy, student, tok, data, BLOCK, seed=0)
    unit = DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), 10, rollout=rollout)
    mb = batch(data, [0, 1, 2, 3])
    sampled, _, _ = rollout(mb)
    plan = unit.plan([mb], 0.5)
    mp = plan.micro[0]
    want_valid = sampled["mask"][:, 1:].reshape(-1)  # position t predicts t + 1: loss where t + 1 was sampled
    assert torch.equal(mp.valid, want_valid) and torch.equal(mp.ids, sampled["ids"])
    assert torch.all(mp.w[~want_valid] == 0) and (mp.w[want_valid] > 0).all()
    if unit.features:
        assert want_valid[mp.hard_idx].all()
    loss, parts = unit.loss(plan, 0)
    assert parts["onpolicy_frac"] == 1.0 and plan.logs["gen_len"] == want_valid.sum() / 4
    # the data after the prompt is replaced: other tails, same prompts, the same loss
    tails = batch(data, [0, 1, 2, 3])
    tails["ids"][:, 16:] = (tails["ids"][:, 16:] + 1) % vocab
    loss2, _ = unit.loss(unit.plan([tails], 0.5), 0)
    assert torch.equal(loss, loss2)
