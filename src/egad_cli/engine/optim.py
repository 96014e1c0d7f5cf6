"""AdamW with decoupled weight decay (none on norms/biases) and a warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch

from egad_cli.config.schema import TrainerConfig


def param_groups(named_params: list[tuple[str, torch.nn.Parameter, float]], weight_decay: float) -> list[dict]:
    """named_params: (name, param, lr multiplier). 1-D tensors (norms, biases) get no weight decay."""
    groups: dict[tuple[float, float], list] = {}
    for name, param, lr_mult in named_params:
        if not param.requires_grad:
            continue
        decay = 0.0 if param.ndim < 2 else weight_decay
        groups.setdefault((decay, lr_mult), []).append(param)
    return [{"params": ps, "weight_decay": wd, "lr_mult": m} for (wd, m), ps in groups.items()]


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to min_ratio at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


#: device types with torch's fused (one-kernel-per-dtype) AdamW (torch >= 2.4 for CPU)
FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps")


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Fused AdamW updates every parameter in one kernel per dtype and device instead of a loop of
    small ops (torch's default on CPU): 3.8 vs 26.6 ms a step for the tiny student's 6.7M parameters
    on the 2-core CPU. Used whenever all parameters are floating-point tensors on a device that has
    the kernel; else torch's default. The same update to rounding
    (tests/engine/test_performance_paths.py)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)


def build_optimizer(named_params, cfg: TrainerConfig, total_steps: int):
    groups = param_groups(named_params, cfg.weight_decay)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused_supported(params))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio))
    return opt, sched
