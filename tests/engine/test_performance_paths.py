"""The fast paths of issue 11 change no result: the teacher logits kept between the statistics pass and the
loss give the loss of recomputing them; chunk_size=auto keeps the loss's vocabulary-sized temporaries within
loss.memory_mb (measured by tracking every tensor the loss allocates); fused AdamW takes the for-each step."""

from __future__ import annotations

import weakref

import pytest
import torch
from conftest import cpu_runtime, random_packed, tiny_models, typed_config
from torch.utils._python_dispatch import TorchDispatchMode

from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.optim import build_optimizer
from egad_cli.losses import chunked_distill_loss, forward_kl

pytestmark = pytest.mark.numerics  # two computations of the same math: .ci/run reruns these under AVX2 kernels


def _unit(overrides):
    cfg = typed_config(["debug=smoke", *overrides])
    teacher, student, _, vocab = tiny_models(cfg)
    return DistillUnit(teacher, student, vocab, cfg, cpu_runtime(), total_steps=4), vocab


def _loss_and_grads(unit, vocab):
    data = random_packed(3, 32, vocab, seed=1, prompt_lens=[4, 0, 9])
    with torch.no_grad():
        plan = unit.plan([{"ids": data.ids, "mask": data.mask}], 0.6)
    kept = plan.micro[0].t_logits
    loss, _ = unit.loss(plan, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in unit.train_modules.named_parameters() if p.grad is not None}
    assert plan.micro[0].t_logits is None  # handed to the loss once (it overwrites them)
    again, _ = unit.loss(plan, 0)  # a second loss on the same plan recomputes them: the same loss
    torch.testing.assert_close(again.detach(), loss.detach(), rtol=1e-6, atol=1e-7)
    return kept, plan.micro[0], loss.detach(), grads


@pytest.mark.parametrize("method", ["egad", "eakd"])
def test_kept_and_recomputed_teacher_logits_give_the_same_loss(method):
    kept_unit, vocab = _unit([f"method={method}"])
    kept, mp, kept_loss, kept_grads = _loss_and_grads(kept_unit, vocab)
    assert kept is not None and kept.shape == (mp.targets.numel(), vocab)  # within the budget
    dropped_unit, _ = _unit([f"method={method}", "loss.keep_teacher_logits_mb=0"])  # 0: always recompute
    kept, _, dropped_loss, dropped_grads = _loss_and_grads(dropped_unit, vocab)
    assert kept is None
    torch.testing.assert_close(kept_loss, dropped_loss, rtol=1e-6, atol=1e-7)
    assert kept_grads.keys() == dropped_grads.keys()
    for name in kept_grads:
        torch.testing.assert_close(kept_grads[name], dropped_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_kd_keeps_nothing_it_has_no_statistics_pass():
    unit, vocab = _unit(["method=kd"])
    kept, _, _, _ = _loss_and_grads(unit, vocab)
    assert kept is None


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of every tensor an op allocates (views and in-place results are not new memory)
    until Python frees it; ``peak`` is the most that was alive at once, counted from entering the mode."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a) for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or id(t) in inputs or t._base is not None or id(t) in self._seen:
                continue
            nbytes = t.untyped_storage().nbytes()
            self._seen.add(id(t))
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._freed, id(t), nbytes)
        return out


def test_chunk_size_auto_keeps_the_loss_within_its_memory_budget():
    n, v, ds, dt = 512, 4096, 16, 24
    cfg = typed_config(["debug=smoke", "loss.memory_mb=4"])
    rows = cfg.loss.chunk_rows(v)
    assert rows == 4 * 2**20 // (cfg.loss.LIVE_TEMPORARIES * v * 4) == 64
    g = torch.Generator().manual_seed(0)
    s_hidden = torch.randn(n, ds, generator=g, requires_grad=True)
    s_head = torch.randn(v, ds, generator=g, requires_grad=True)
    t_hidden, t_head = torch.randn(n, dt, generator=g), torch.randn(v, dt, generator=g)
    tau, coef = 0.5 + torch.rand(n, generator=g), torch.rand(n, generator=g)
    with LiveTensorBytes() as tracked:
        div, _ = chunked_distill_loss(s_hidden, s_head, t_hidden, t_head, tau, coef, divergence=forward_kl,
                                      chunk_size=rows)
        div.backward()
    # The gradient buffers ([V, Ds] for the head, [N, Ds] for the rows, and their results) are the size
    # of .grad; everything else must fit the budget: LIVE_TEMPORARIES fp32 [64, 4096] = 4 MiB.
    grads = 3 * (v * ds + n * ds) * 4
    assert tracked.peak <= 4 * 2**20 + grads, tracked.peak
    assert tracked.peak >= 2 * rows * v * 4  # the tracker does see the chunk's logits
    naive = 4 * n * v * 4  # the naive loss: two [N, V] logits, their log-softmaxes
    assert tracked.peak < naive / 4


def test_fused_adamw_takes_the_same_step_as_the_for_each_one(monkeypatch):
    import copy

    from egad_cli.engine import optim

    cfg = typed_config(["debug=smoke"]).trainer
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    assert optim.fused_supported(list(net.parameters()))  # CPU fp32 parameters: fused by default
    params = {}
    for fused in (True, False):
        model = copy.deepcopy(net)
        monkeypatch.setattr(optim, "fused_supported", lambda ps, f=fused: f)
        opt, sched = build_optimizer([(n, p, 1.0) for n, p in model.named_parameters()], cfg, 10)
        assert bool(opt.defaults["fused"]) is fused
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            sched.step()
        params[fused] = [p.detach().clone() for p in model.parameters()]
    moved = [not torch.equal(a, b) for a, b in zip(params[True], net.parameters())]
    assert all(moved)
    for a, b in zip(params[True], params[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
