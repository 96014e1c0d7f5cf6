"""The whole EGAD objective against an oracle written from DESIGN §3 with naive full-vocabulary fp64 tensors.

One optimizer step of two micro-batches (grad accumulation 2, prompt tokens masked): entropy, percentile
rank u, soft linear curriculum weights, entropy temperature, top-q hard tokens with the cosine feature loss
through the unit's projectors, forward KL at τ_i scaled by τ_i² (or 1, or τ_i² over its step mean:
temperature.scale), and α·CE — normalised by the step's global
Σw and token count. The engine's summed micro-batch losses and its gradients (student and projectors) must
match the oracle's.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import cpu_runtime, random_packed, tiny_models, typed_config

from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.normalization import backward

pytestmark = pytest.mark.numerics  # two computations of the same math: .ci/run reruns these under AVX2 kernels

KAPPA, GAMMA, MU, ALPHA, Q, PROGRESS = 0.8, 1.3, 0.7, 0.5, 0.3, 0.3
OVERRIDES = ["debug=smoke", "method=egad", f"temperature.kappa={KAPPA}", f"curriculum.gamma={GAMMA}",
             f"branch.mu={MU}", f"method.ce_weight={ALPHA}", f"branch.q={Q}", "trainer.grad_accum=2"]


def oracle(unit: DistillUnit, micro: list[dict], s: float, scale: str = "tau2") -> torch.Tensor:
    """L of DESIGN §3 for the step, differentiable w.r.t. the student and the projectors."""
    cfg, vocab = unit.cfg, unit.vocab
    t_logits, s_logits, valid, targets = [], [], [], []
    s_feats = [[] for _ in unit.layer_map]
    t_feats = [[] for _ in unit.layer_map]
    for mb in micro:
        ids, mask = mb["ids"], mb["mask"]
        with torch.no_grad():
            t_out = unit.teacher(input_ids=ids, output_hidden_states=True)
        s_out = unit.student(input_ids=ids, output_hidden_states=True)
        t_logits.append(t_out.logits[:, :-1, :vocab].reshape(-1, vocab).double())
        s_logits.append(s_out.logits[:, :-1, :vocab].reshape(-1, vocab).double())
        valid.append(mask[:, 1:].reshape(-1))
        targets.append(ids[:, 1:].reshape(-1))
        for j, (ls, lt) in enumerate(unit.layer_map):
            s_feats[j].append(s_out.hidden_states[ls][:, :-1].reshape(-1, s_out.hidden_states[ls].shape[-1]))
            t_feats[j].append(t_out.hidden_states[lt][:, :-1].reshape(-1, t_out.hidden_states[lt].shape[-1]))
    T, S = torch.cat(t_logits), torch.cat(s_logits)  # [N, V]
    valid, targets = torch.cat(valid), torch.cat(targets)  # [N]
    N, n = valid.numel(), int(valid.sum())

    p = T.softmax(-1)
    H = -(p * p.log()).sum(-1)  # [N] teacher entropy at T = 1
    Hv = H[valid]
    u = torch.zeros(N, dtype=torch.float64)  # percentile rank, ties averaged
    for i in range(N):
        if valid[i]:
            less, equal = int((Hv < H[i]).sum()), int((Hv == H[i]).sum())
            u[i] = (less + (equal - 1) / 2) / (n - 1)

    c = min(1.0, s / cfg.curriculum.rho)  # linear pacing
    w = torch.exp(GAMMA * (2 * c - 1) * (2 * u - 1)) * valid
    w = w * n / w.sum()  # mean 1 over valid tokens
    tau = (cfg.temperature.base * torch.exp(KAPPA * (2 * u - 1))).clamp(cfg.temperature.t_min, cfg.temperature.t_max)

    k = math.ceil(Q * n - 1e-9)  # top q by u, ties by lower index
    order = sorted((i for i in range(N) if valid[i]), key=lambda i: (-float(u[i]), i))
    hard = torch.zeros(N, dtype=torch.bool)
    hard[order[:k]] = True

    t_logp = torch.log_softmax(T / tau[:, None], -1)
    s_logp = torch.log_softmax(S / tau[:, None], -1)
    D = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # forward KL at τ_i

    phi = torch.zeros(N, dtype=torch.float64)
    for j, lin in enumerate(unit.train_modules.projectors.proj):
        a = torch.cat(s_feats[j]).double() @ lin.weight.double().T  # [N, Dt]
        b = torch.cat(t_feats[j]).double()
        phi = phi + 1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))

    ce = -torch.log_softmax(S, -1).gather(1, targets[:, None]).squeeze(1)
    factor = {"tau2": tau**2, "none": torch.ones_like(tau), "mean1": tau**2 / (tau**2)[valid].mean()}[scale]
    distill = (w * (factor * D + MU * hard * phi)).sum() / w.sum()
    return distill + ALPHA * (ce * valid).sum() / n


def grads(unit) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in unit.train_modules.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("scale", ["tau2", "none", "mean1"])
def test_engine_loss_and_gradient_equal_the_oracle(scale):
    """Each temperature.scale: what multiplies a token's divergence (τ², 1, τ² over its mean), value and gradient."""
    cfg = typed_config([*OVERRIDES, f"temperature.scale={scale}"])
    teacher, student, _, vocab = tiny_models(cfg)
    unit = DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), total_steps=10)
    micro = []
    for seed, prompts in ((0, [3, 0]), (1, [0, 6])):
        data = random_packed(2, 16, vocab, seed=seed, prompt_lens=prompts)
        micro.append({"ids": data.ids, "mask": data.mask})

    with torch.no_grad():
        plan = unit.plan(micro, PROGRESS)
    assert plan.logs["hard_frac"] > 0 and 0 < plan.logs["tau_mean"] != 1.0  # every mechanism is active
    engine_loss = 0.0
    for i in range(len(micro)):
        loss, _ = unit.loss(plan, i)
        backward(loss, unit.runtime)
        engine_loss += loss.item()
    engine_grads = grads(unit)
    unit.train_modules.zero_grad(set_to_none=True)

    want = oracle(unit, micro, PROGRESS, scale)
    want.backward()
    oracle_grads = grads(unit)

    assert engine_loss == pytest.approx(want.item(), rel=1e-5)
    assert engine_grads.keys() == oracle_grads.keys()
    assert any(k.startswith("projectors.") for k in engine_grads)
    for name, g in engine_grads.items():
        torch.testing.assert_close(g, oracle_grads[name], rtol=1e-4, atol=1e-6, msg=name)
