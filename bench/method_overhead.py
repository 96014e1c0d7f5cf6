"""Extra cost of each EGAD mechanism over plain KD, measured in one process on the same models and batches.

Each variant runs the real engine step (teacher pass, policies, chunked loss, backward, AdamW)
for --steps steps after one warm-up step; the table gives the median seconds per step and the
ratio to plain KD. Usage: python bench/method_overhead.py [--steps 5] [teacher=random ...overrides]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from egad_cli.config import cache_dir, conf_dir, register_schemas, validate
from egad_cli.data import build_splits
from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.optim import build_optimizer
from egad_cli.engine.runtime import resolve_runtime
from egad_cli.engine.sampler import BlockSampler
from egad_cli.models import load_models

VARIANTS = {
    "kd (reference)": ["method=kd"],
    "+ curriculum": ["method=kd", "curriculum=linear"],
    "+ entropy temperature": ["method=kd", "temperature=entropy"],
    "+ dual branch": ["method=kd", "branch=dual"],
    "egad (all three)": ["method=egad"],
    "eakd": ["method=eakd"],
    "adakd": ["method=adakd"],
}


def time_variant(overrides: list[str], steps: int, shared: dict) -> list[float]:
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        raw = compose("distill", overrides=[*overrides, "run_dir=/tmp/egad-bench"])
    cfg = validate(raw)
    runtime = shared["runtime"]
    torch.manual_seed(0)
    student = shared["build_student"]()
    unit = DistillUnit(shared["teacher"], student, shared["vocab"], cfg, runtime, steps + 1)
    return timed_steps(unit, cfg, shared["train"], steps, runtime)


def timed_steps(unit: DistillUnit, cfg, data, steps: int, runtime) -> list[float]:
    """Seconds of each full engine step (plan, loss, backward, AdamW) after one warm-up step."""
    opt, _ = build_optimizer(unit.named_trainable(), cfg.trainer, steps + 1)
    sampler = BlockSampler(len(data), cfg.trainer.batch_size, 0)
    times = []
    for step in range(steps + 1):
        mb = [sampler.batch(data, step, runtime.device)]
        t0 = time.perf_counter()
        with torch.no_grad(), runtime.autocast():
            plan = unit.plan(mb, step / (steps + 1))
        with runtime.autocast():
            loss, _ = unit.loss(plan, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        unit.end_step(step + 1, {"loss_logit": float(loss.detach())})
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("overrides", nargs="*", help="hydra overrides for all variants, e.g. teacher=random")
    args = ap.parse_args()
    register_schemas()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        base = validate(compose("distill", overrides=[*args.overrides, "run_dir=/tmp/egad-bench"]))
    runtime = resolve_runtime(base.trainer)
    teacher, student, tokenizer, vocab = load_models(base, runtime, seed=base.trainer.seed)
    init = {k: v.clone() for k, v in student.state_dict().items()}

    def build_student():
        student.load_state_dict(init)
        return student

    splits = build_splits(base.dataset, tokenizer, cache_dir(base.cache_dir))
    shared = {"runtime": runtime, "teacher": teacher, "vocab": vocab, "train": splits.train,
              "build_student": build_student}
    rows = []
    for name, overrides in VARIANTS.items():
        times = time_variant([*args.overrides, *overrides], args.steps, shared)
        rows.append((name, statistics.median(times)))
    ref = rows[0][1]
    tokens = base.trainer.batch_size * (base.dataset.block_size - 1)
    print(f"method overhead: teacher={base.teacher.name} student={base.student.name} batch={base.trainer.batch_size}"
          f"x{base.dataset.block_size} device={runtime.device}, median of {args.steps} steps")
    print(f"{'variant':<24}{'s/step':>10}{'tokens/s':>10}{'× kd':>8}")
    for name, sec in rows:
        print(f"{name:<24}{sec:>10.3f}{tokens / sec:>10.0f}{sec / ref:>8.2f}")


if __name__ == "__main__":
    main()
