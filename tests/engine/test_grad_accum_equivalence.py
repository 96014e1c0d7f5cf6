"""Gradient accumulation equals one larger batch (DESIGN §3: global denominators over the step's micro-batches).

With the real DistillUnit and the real loop, one optimizer step with batch_size=4, grad_accum=1 and one with
batch_size=2, grad_accum=2 over the same 4 sequences give the same gradients and the same parameters. The
sequences have different numbers of masked (prompt) tokens, so a per-micro-batch normalisation would not
merely rescale the gradient: it would change its direction too.
"""

from __future__ import annotations

import pytest
import torch
from conftest import cpu_runtime, random_packed, tiny_models, typed_config

from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.loop import train
from egad_cli.engine.sampler import BlockSampler

pytestmark = pytest.mark.numerics  # two computations of the same math: .ci/run reruns these under AVX2 kernels

BLOCK = 32
PROMPT_LENS = [0, 5, 13, 2, 20, 0, 7, 9]  # 8 blocks: one step of 4 takes half of them

CASES = {
    "kd": ["method=kd"],
    "egad": ["method=egad"],
    "eakd": ["method=eakd"],
    "eakd-token_count": ["method=eakd", "weighting.norm=token_count"],
    "adakd": ["method=adakd", "weighting.r0=0.5"],
    "ce": ["method=ce"],
    "kd+ce": ["method=kd", "method.ce_weight=0.5"],
}


class RecordingUnit(DistillUnit):
    """Keeps the token ids of every micro-batch the loop hands to plan()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def plan(self, micro_batches, progress):
        self.seen.append(torch.cat([mb["ids"] for mb in micro_batches]))
        return super().plan(micro_batches, progress)


def one_step(overrides: list[str], batch_size: int, grad_accum: int, run_dir):
    cfg = typed_config(["debug=smoke", *overrides, f"trainer.batch_size={batch_size}",
                        f"trainer.grad_accum={grad_accum}", "trainer.max_steps=1", "trainer.warmup_steps=0",
                        "trainer.grad_clip=0",  # clipping would hide a wrongly scaled gradient
                        "trainer.ckpt_every=0", "trainer.lr=1e-3"])
    teacher, student, _, vocab = tiny_models(cfg)
    unit = RecordingUnit(teacher, student, vocab, cfg, cpu_runtime(), total_steps=1)
    data = random_packed(len(PROMPT_LENS), BLOCK, vocab, seed=0, prompt_lens=PROMPT_LENS)
    run_dir.mkdir(parents=True)
    before = {n: p.detach().clone() for n, p in unit.train_modules.named_parameters()}
    result = train(unit, data, cfg.trainer, cpu_runtime(), run_dir, 1, progress=False)
    grads = {n: p.grad.detach().clone() for n, p in unit.train_modules.named_parameters() if p.grad is not None}
    params = {n: p.detach().clone() for n, p in unit.train_modules.named_parameters()}
    check_one_adamw_step(unit, cfg.trainer, before, grads, params)
    return unit, grads, result.last_logs


def check_one_adamw_step(unit, trainer, before, grads, after) -> None:
    """The loop applied exactly one AdamW step to the step's accumulated gradient (not one per micro-batch).

    Step 1 of AdamW in closed form (m̂ = g, v̂ = g²): p' = p − lr·(g / (|g| + ε) + wd·p). This is how the
    parameters are compared, rather than run against run: g / (|g| + ε) divides a rounding-level gradient
    difference by |g|, which for a gradient near ε (embedding rows of rare tokens) is of the order of 1, so
    two runs whose gradients agree to rounding may move such a weight by different fractions of lr on another
    CPU's kernels. Each run is checked against its own gradient, and the runs' gradients against each other.
    Tolerance: the fused kernel's rounding of the update (a few fp32 ulps of lr) plus that of p itself."""
    eps = 1e-8  # torch.optim.AdamW's default, which build_optimizer keeps
    for name, p, lr_mult in unit.named_trainable():
        lr = trainer.lr * lr_mult
        wd = 0.0 if p.ndim < 2 else trainer.weight_decay  # optim.param_groups: no decay on norms and biases
        g = grads.get(name, torch.zeros_like(before[name])).double()
        p0 = before[name].double()
        want = p0 - lr * (g / (g.abs() + eps) + wd * p0)
        ulp = torch.finfo(torch.float32).eps
        tol = 4 * ulp * (lr + p0.abs())
        assert ((after[name].double() - want).abs() <= tol).all(), \
            f"{name}: not one AdamW step from the accumulated gradient"


def test_sampler_yields_the_same_sequences_for_any_micro_batch_split():
    one = BlockSampler(8, 4, seed=3)
    two = BlockSampler(8, 2, seed=3)
    for step in range(5):  # across an epoch boundary too (8 blocks, 4 per step)
        big = one.indices(step)
        small = torch.cat([two.indices(2 * step), two.indices(2 * step + 1)])
        assert torch.equal(big, small)
    # each epoch is a permutation: every block exactly once
    assert sorted(torch.cat([one.indices(0), one.indices(1)]).tolist()) == list(range(8))


@pytest.mark.parametrize("case", sorted(CASES))
def test_accumulated_micro_batches_equal_one_big_batch(case, tmp_path):
    unit_a, grads_a, logs_a = one_step(CASES[case], 4, 1, tmp_path / "a")
    unit_b, grads_b, logs_b = one_step(CASES[case], 2, 2, tmp_path / "b")
    # the same 4 sequences, in the same order
    assert torch.equal(unit_a.seen[0], unit_b.seen[0])
    # the same gradients for every trained parameter (projectors included for egad)
    assert grads_a.keys() == grads_b.keys() and grads_a
    if case == "egad":
        assert any(n.startswith("projectors.") for n in grads_a)
    total = torch.sqrt(sum(g.double().square().sum() for g in grads_a.values()))
    assert total > 1e-6, "no gradient: the test would prove nothing"
    for name in grads_a:
        # fp32 sums over the step's tokens in another order (two micro-batches, other kernels on other CPUs):
        # measured <= 7e-7 of each tensor's largest entry under AVX-512 and AVX2; a per-micro-batch mean
        # is off by > 1e-3 (test_gradient_is_not_a_per_micro_batch_mean)
        scale = grads_a[name].abs().max().item()
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=0, atol=1e-5 * scale, msg=name)
    # the parameters: one_step checked that each run took one AdamW step from its own gradient (why not run
    # against run: check_one_adamw_step)
    # and the same step statistics
    for key in ("loss", "loss_logit", "loss_feature", "loss_ce", "tau_mean", "weight_mean", "hard_frac"):
        assert logs_b[key] == pytest.approx(logs_a[key], rel=1e-5, abs=1e-6), key


def test_gradient_is_not_a_per_micro_batch_mean(tmp_path):
    """The reference gradient differs from what per-micro-batch means would give (the known bug class): the
    test above can tell them apart on this data."""
    _, grads, _ = one_step(CASES["kd"], 4, 1, tmp_path / "a")
    cfg = typed_config(["debug=smoke", "method=kd"])
    teacher, student, _, vocab = tiny_models(cfg)
    data = random_packed(len(PROMPT_LENS), BLOCK, vocab, seed=0, prompt_lens=PROMPT_LENS)
    idx = BlockSampler(len(data), 4, cfg.trainer.seed).indices(0)
    unit = DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), total_steps=1)
    # per-micro-batch normalisation: each half planned (and so normalised) on its own, then summed
    for half in (idx[:2], idx[2:]):
        plan = unit.plan([{"ids": data.ids[half], "mask": data.mask[half]}], 0.0)
        loss, _ = unit.loss(plan, 0)
        loss.backward()
    name = "student.model.embed_tokens.weight"
    wrong = dict(unit.train_modules.named_parameters())[name].grad
    assert not torch.allclose(wrong, grads[name], rtol=1e-3, atol=1e-6)
