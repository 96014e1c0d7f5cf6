"""What a cache format costs, measured while it is built: its error against the exact teacher, and the time
the teacher's head takes (what a step from an exact cache spends instead of the teacher's forward).

Measured on the first batch a build writes: the teacher's exact log-probabilities p (fp32, from a fresh
forward) against what the stored fields give back.

- exact: the distribution recomputed from the stored final states (storage rounding: fp16, bf16 or int8):
  KL(p ‖ p̂) per token, mean and max.
- sampled: the estimate p̂ the draws give of the teacher's target (head ids exact, each drawn id p(u)/π(u),
  every other id 0; ``losses.sampled``), whose error is the noise in the gradient of forward KL at τ = 1
  (∂/∂z of Σ p̂ log(p̂/q) is q·Σp̂ − p̂, against q − p): ‖p̂ − p‖₂ / ‖p‖₂ per token, median.
- topk: the share of the teacher's mass the loss sees only as one bucket (1 − Σ_top p), mean.
Every kind also gets the relative error ‖p̂ − p‖₂ / ‖p‖₂ where it has a p̂ (exact: the rounding's).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from egad_cli.models.documents import base_forward

#: tokens measured (the first batch's, at most this many)
MEASURED_TOKENS = 512


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_format(teacher, ids: Tensor, rows: dict[str, Tensor], plan: dict, head: Tensor) -> dict:
    """ids [B, L] a batch just built, rows its fields as ``build.teacher_rows`` returned them, head [V, Dt] the
    teacher's output head. Returns the format's error (module docstring) and the timings, per 1,000 tokens,
    of the teacher's forward and of its head (matmul + log-softmax)."""
    device = ids.device
    _sync(device)
    t0 = time.perf_counter()
    hidden = base_forward(teacher, ids).last_hidden_state[:, :-1]  # [B, L-1, Dt]
    _sync(device)
    t1 = time.perf_counter()
    n_all = hidden.shape[0] * hidden.shape[1]
    flat = hidden.reshape(n_all, -1)[:MEASURED_TOKENS]  # [n, Dt]: never [all tokens × V] (a 150k vocabulary)
    dt = torch.float32  # the reference is exact (as the stored statistics are) even for a teacher run in bf16
    head = head.to(device, dt)
    _sync(device)
    t2 = time.perf_counter()
    with torch.autocast(device_type=device.type, enabled=False):
        logp = torch.log_softmax(flat.to(dt) @ head.T, dim=-1)  # [n, V]
    _sync(device)
    t3 = time.perf_counter()
    n = flat.shape[0]
    out = {"tokens": n, "forward_ms_per_1k": 1e3 * (t1 - t0) / n_all * 1000,
           "head_ms_per_1k": 1e3 * (t3 - t2) / n * 1000}
    take = slice(0, n)
    p = logp.exp()  # [n, V]
    kind = plan.get("kind", "topk")
    if kind == "exact":
        from egad_cli.teacher_cache.states import load_state

        name = f"states.{plan['final_layer']}"
        stored = load_state(lambda f: rows[f], name, plan.get("state_quant", "none"))  # [B, L-1, Dt] fp32
        stored = stored.reshape(-1, stored.shape[-1])[take].to(device)
        with torch.autocast(device_type=device.type, enabled=False):
            logp_hat = torch.log_softmax((stored.to(dt) @ head.T).float(), dim=-1)  # [n, V]
        kl = (p * (logp - logp_hat)).sum(dim=-1)  # [n]
        p_hat = logp_hat.exp()
        out.update(kl_mean=float(kl.mean()), kl_max=float(kl.max()), rel_error=_rel_error(p_hat, p))
    elif kind == "sampled":
        from egad_cli.losses.sampled import importance_weights
        from egad_cli.teacher_cache.shards import sampled_rows

        top = sampled_rows(rows, plan, device)
        top = top.rows(torch.arange(top.head.ids.shape[0], device=device)[take])
        p_hat = torch.zeros_like(p)
        p_hat.scatter_(1, top.head.ids, top.head.logp.exp())
        w = importance_weights(top)  # [n, m], 0 on padding slots
        p_hat.scatter_add_(1, top.sample_ids, torch.where(w > 0, w * top.sample_logp.exp(), 0.0))
        out.update(rel_error=_rel_error(p_hat, p), tail_mass=float(top.head.log_tail[:, _exponent_one(plan)].exp().mean()))
    else:
        k = int(plan["k"])
        out.update(tail_mass=float((1 - p.topk(min(k, p.shape[1]), dim=-1).values.sum(dim=-1)).clamp_min(0).mean()))
    return out


def _rel_error(p_hat: Tensor, p: Tensor) -> float:
    """median over tokens of ‖p̂ − p‖₂ / ‖p‖₂ (rows [n, V])."""
    return float(((p_hat - p).norm(dim=-1) / p.norm(dim=-1)).median())


def _exponent_one(plan: dict) -> int:
    return [float(e) for e in plan["exponents"]].index(1.0)


def describe(err: dict, kind: str) -> str:
    """One line for `egad cache`: the format's measured error against the exact teacher."""
    where = f"measured on {err['tokens']} of its tokens"
    if kind == "exact":
        return (f"error against the live teacher: KL(live ‖ cached) {err['kl_mean']:.1e} nats/token on average, "
                f"{err['kl_max']:.1e} at most ({where}; the storage rounding of the states)")
    if kind == "sampled":
        return (f"error against the exact teacher: the draws' estimate of the teacher's target is off by "
                f"{100 * err['rel_error']:.0f} % (median ‖p̂ − p‖/‖p‖: the gradient noise of forward KL at τ = 1, "
                f"unbiased), and {100 * err['tail_mass']:.1f} % of the mass lies outside the exact head ({where}); "
                f"kind=exact reproduces the live teacher")
    return (f"error against the exact teacher: {100 * err['tail_mass']:.1f} % of its mass is seen only as one "
            f"bucket, a lower bound of every divergence ({where}); kind=exact reproduces the live teacher")


def describe_cost(err: dict) -> str:
    """One line for an exact cache: what a training step spends on the head instead of the teacher's forward."""
    return (f"training from it recomputes the teacher's head per token: {err['head_ms_per_1k']:.0f} ms per 1,000 "
            f"tokens here, where the live teacher's forward took {err['forward_ms_per_1k']:.0f} ms "
            f"({err['head_ms_per_1k'] / max(err['forward_ms_per_1k'], 1e-9):.2f}×)")
