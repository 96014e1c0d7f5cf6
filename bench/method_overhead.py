"""Extra cost of each EGAD mechanism over plain KD, measured in one process on the same models and batches.

Each variant runs the real engine step (teacher pass, policies, chunked loss, backward, clip, AdamW)
for --steps steps after one warm-up step, the variants taking turns step by step; the table gives
the median seconds per step and the ratio to plain KD. Usage: python bench/method_overhead.py [--steps 5] [--variants kd,egad] [teacher=random ...overrides]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from egad_cli.config import cache_dir, conf_dir, register_schemas, validate
from egad_cli.data import build_splits
from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.loop import train_step
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


def timed_steps(unit: DistillUnit, cfg, data, steps: int, runtime) -> list[float]:
    """Seconds of each full engine step of one unit after one warm-up step (see ``alternating_steps``)."""
    return alternating_steps({"one": (unit, cfg)}, data, steps, runtime)["one"]


def alternating_steps(units: dict, data, steps: int, runtime) -> dict[str, list[float]]:
    """Seconds of each full engine step (``engine.loop.train_step``: plan, loss, backward, clip, AdamW)
    of every unit ({name: (unit, cfg)}), after one warm-up step each. The units take turns step by step
    (a, b, c, a, b, c, ...) on the same batches, so the shared machine's load changes hit them alike."""
    state = {}
    for name, (unit, cfg) in units.items():
        opt, sched = build_optimizer(unit.named_trainable(), cfg.trainer, steps + 1)
        state[name] = (unit, cfg, opt, sched, [p for _, p, _ in unit.named_trainable()],
                       BlockSampler(len(data), cfg.trainer.batch_size, 0))
    times: dict[str, list[float]] = {name: [] for name in units}
    for step in range(steps + 1):
        for name, (unit, cfg, opt, sched, params, sampler) in state.items():
            mb = [sampler.batch(data, step, runtime.device)]
            t0 = time.perf_counter()
            train_step(unit, mb, step, steps + 1, opt, sched, params, cfg.trainer, runtime)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            if step > 0:
                times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--variants", default=None,
                    help="comma-separated subset of the rows by their first word, e.g. kd,egad (default: all)")
    ap.add_argument("overrides", nargs="*", help="hydra overrides for all variants, e.g. teacher=random")
    args = ap.parse_args()
    register_schemas()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        base = validate(compose("distill", overrides=[*args.overrides, "run_dir=/tmp/egad-bench"]))
    runtime = resolve_runtime(base.trainer)
    teacher, student, tokenizer, vocab = load_models(base, runtime, seed=base.trainer.seed)
    splits = build_splits(base.dataset, tokenizer, cache_dir(base.cache_dir))
    chosen = {name: o for name, o in VARIANTS.items()
              if args.variants is None or name.split()[0] in args.variants.split(",") or name.startswith("kd")}
    units = {}
    for name, overrides in chosen.items():
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = validate(compose("distill", overrides=[*args.overrides, *overrides, "run_dir=/tmp/egad-bench"]))
        torch.manual_seed(0)
        units[name] = (DistillUnit(teacher, copy.deepcopy(student), vocab, cfg, runtime, args.steps + 1), cfg)
    times = alternating_steps(units, splits.train, args.steps, runtime)
    rows = [(name, statistics.median(t)) for name, t in times.items()]
    ref = rows[0][1]
    tokens = base.trainer.batch_size * (base.dataset.block_size - 1)
    print(f"method overhead: teacher={base.teacher.name} student={base.student.name} batch={base.trainer.batch_size}"
          f"x{base.dataset.block_size} device={runtime.device} {runtime.precision.describe()}, median of {args.steps} "
          f"steps, variants taking turns")
    print(f"{'variant':<24}{'s/step':>10}{'tokens/s':>10}{'× kd':>8}")
    for name, sec in rows:
        print(f"{name:<24}{sec:>10.3f}{tokens / sec:>10.0f}{sec / ref:>8.2f}")


if __name__ == "__main__":
    main()
