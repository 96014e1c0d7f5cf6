"""fp32 against bf16 on this machine: the engine step of kd and egad at each precision, in one process.

Each of the four arms (kd and egad, fp32 and bf16) runs the real engine step (``engine.loop.train_step``: teacher
pass and policies = the plan, then the student's forward, chunked loss, backward, clip, AdamW) on the same
batches, the arms taking turns step by step so that the machine's load hits them alike; the first step of each
is a warm-up. The fp32 arms run an fp32 teacher with no autocast, the bf16 arms a bf16 teacher under bf16
autocast, exactly as ``trainer.precision=fp32`` and ``=bf16`` set them up (``engine.runtime.resolve_runtime``).

Printed per arm: the median step, of it the plan (teacher) and the rest (the student), tokens/s, the speed-up of
bf16 over fp32, and a roofline line: the step's matmul FLOPs (bench/peer_trl.model_flops: teacher forward,
student forward + backward, lm_heads included) over the step time, against this machine's measured matmul peak
at the arm's precision, and the step time that peak would allow (the "bf16 matmul limit").
Also what ``precision=auto`` picks here and why, the median minor page faults of a step (engine.host_memory: with
glibc's defaults every step faults its vocabulary-sized blocks in again) and the process's peak resident memory.

    python bench/precision_speed.py [--steps 8] [--methods kd,egad] [distill overrides…]
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_trl import matmul_flops_per_s, model_flops

from egad_cli.config import cache_dir, conf_dir, register_schemas, validate
from egad_cli.data import build_splits
from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.loop import train_step
from egad_cli.engine.optim import build_optimizer
from egad_cli.engine.precision import choose_precision
from egad_cli.engine.runtime import resolve_runtime
from egad_cli.engine.sampler import BlockSampler
from egad_cli.models import load_models


def config(overrides: list[str]):
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return validate(compose("distill", overrides=[*overrides, "run_dir=/tmp/egad-bench"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--methods", default="kd,egad")
    ap.add_argument("overrides", nargs="*", help="hydra overrides for every arm, e.g. teacher=random")
    args = ap.parse_args()
    register_schemas()
    torch.set_float32_matmul_precision("high")  # as egad distill sets it
    auto = choose_precision("auto", torch.device("cpu") if not torch.cuda.is_available() else torch.device("cuda"))
    arms, models = {}, {}
    for precision in ("fp32", "bf16"):
        base = config([*args.overrides, f"trainer.precision={precision}"])
        runtime = resolve_runtime(base.trainer)
        teacher, student, tokenizer, vocab = load_models(base, runtime, seed=base.trainer.seed)
        models[precision] = (teacher, student)
        data = build_splits(base.dataset, tokenizer, cache_dir(base.cache_dir)).train
        for method in args.methods.split(","):
            cfg = config([*args.overrides, f"trainer.precision={precision}", f"method={method}"])
            torch.manual_seed(0)
            unit = DistillUnit(teacher, copy.deepcopy(student), vocab, cfg, runtime, args.steps + 1)
            opt, sched = build_optimizer(unit.named_trainable(), cfg.trainer, args.steps + 1)
            arms[(method, precision)] = (unit, cfg, runtime, opt, sched, [p for _, p, _ in unit.named_trainable()],
                                         BlockSampler(len(data), cfg.trainer.batch_size, 0), data)
    times = {arm: [] for arm in arms}
    for step in range(args.steps + 1):
        for arm, (unit, cfg, runtime, opt, sched, params, sampler, data) in arms.items():
            mb = [sampler.batch(data, step, runtime.device)]
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            logs, _ = train_step(unit, mb, step, args.steps + 1, opt, sched, params, cfg.trainer, runtime)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
            if step > 0:
                times[arm].append((logs["time_plan_s"], logs["time_step_s"], logs["loss"], faults))
    cfg = next(iter(arms.values()))[1]
    tokens = cfg.trainer.batch_size * (cfg.dataset.block_size - 1)
    teacher, student = models["fp32"]
    flops = (model_flops(teacher, cfg.trainer.batch_size, cfg.dataset.block_size, backward=False)
             + model_flops(student, cfg.trainer.batch_size, cfg.dataset.block_size, backward=True))
    peak = {"fp32": matmul_flops_per_s(torch.float32), "bf16": matmul_flops_per_s(torch.bfloat16)}
    print(f"precision speed: teacher={cfg.teacher.name} student={cfg.student.name} batch={cfg.trainer.batch_size}"
          f"x{cfg.dataset.block_size}, median of {args.steps} steps, arms taking turns; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, ATen {torch.backends.cpu.get_cpu_capability()}")
    print(f"precision=auto here: {auto.describe()}; host memory: {runtime.host_memory}")
    print(f"matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s "
          f"({peak['bf16'] / peak['fp32']:.1f}x); {flops / 1e9:.1f} GFLOP per step")
    print(f"{'method':<8}{'precision':<11}{'s/step':>8}{'plan s':>8}{'student s':>11}{'tokens/s':>10}"
          f"{'bf16 ×':>8}{'% peak':>8}{'× limit':>9}{'last loss':>11}{'faults/step':>13}")
    for (method, precision), rows in times.items():
        step = statistics.median(r[1] for r in rows)
        plan = statistics.median(r[0] for r in rows)
        student_s = statistics.median(r[1] - r[0] for r in rows)
        ref = statistics.median(r[1] for r in times[(method, "fp32")])
        limit = flops / peak[precision]
        print(f"{method:<8}{precision:<11}{step:>8.3f}{plan:>8.3f}{student_s:>11.3f}{tokens / step:>10.0f}"
              f"{ref / step:>8.2f}{flops / step / peak[precision]:>8.0%}{step / limit:>9.1f}{rows[-1][2]:>11.4f}"
              f"{statistics.median(r[3] for r in rows):>13.0f}")
    print(f"peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
