"""What a teacher cache saves: the cost of building it, and a training step from it vs from the live teacher.

In one process, on the same models and batches: `egad cache` over the first --blocks training
blocks of the embedded corpus (SmolLM2 teacher, state_pairs=2 so egad's dual branch can run from
it), then for kd and egad the median seconds of a full engine step (plan, loss, backward, AdamW)
with the live teacher and with the cache. Usage: python bench/cache_speed.py [--blocks 64] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from method_overhead import timed_steps  # bench/ is on sys.path when a script here runs

from egad_cli.commands import cache_job
from egad_cli.config import conf_dir, register_schemas, validate
from egad_cli.config.commands import CacheCommandConfig
from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.runtime import resolve_runtime
from egad_cli.models import load_models
from egad_cli.teacher_cache.use import open_cached_teacher

METHODS = ("kd", "egad")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=64, help="training blocks in the cache")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    register_schemas()
    data = [f"dataset.max_train_tokens={args.blocks * 128}", "dataset.max_val_tokens=1024"]
    out = Path(tempfile.mkdtemp(prefix="egad-cache-bench-"))
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        ccfg: CacheCommandConfig = validate(compose("cache", overrides=[*data, "state_pairs=2", "progress=false",
                                                                          f"out_dir={out}", "output_dir=/tmp"]),
                                            CacheCommandConfig)
        cfgs = {m: validate(compose("distill", overrides=[*data, f"method={m}", "run_dir=/tmp/egad-bench"]))
                for m in METHODS}
    t0 = time.perf_counter()
    cache_job.run(ccfg)
    build_s = time.perf_counter() - t0
    cached = open_cached_teacher(str(out))
    n_tokens = sum(s["n_blocks"] for s in cached.manifest["splits"].values()) * 127

    base = cfgs["kd"]
    runtime = resolve_runtime(base.trainer)
    teacher, student, _, vocab = load_models(base, runtime, seed=0)
    init = {k: v.clone() for k, v in student.state_dict().items()}
    data_blocks = cached.train.packed()
    rows = []
    for method, cfg in cfgs.items():
        medians = []
        for source in ("live", "cache"):
            student.load_state_dict(init)
            torch.manual_seed(0)
            unit = DistillUnit(teacher if source == "live" else None, student, vocab, cfg, runtime, args.steps + 1,
                               cache=cached.train if source == "cache" else None)
            medians.append(statistics.median(timed_steps(unit, cfg, data_blocks, args.steps, runtime)))
        rows.append((method, *medians))
    tokens = base.trainer.batch_size * (base.dataset.block_size - 1)
    print(f"cache speed: SmolLM2 teacher, tiny student, {base.trainer.batch_size}x{base.dataset.block_size} tokens a "
          f"step, {runtime.device}, median of {args.steps} steps")
    print(f"build: {build_s:.1f} s for {n_tokens:,} tokens ({n_tokens / build_s:.0f} tokens/s, "
          f"{build_s / n_tokens * tokens:.2f} s per step's worth of tokens), k={cached.manifest['k']}, states for 2 layers")
    print(f"{'method':<8}{'live s/step':>13}{'cache s/step':>14}{'live / cache':>14}")
    for method, live, cache in rows:
        print(f"{method:<8}{live:>13.3f}{cache:>14.3f}{live / cache:>14.2f}")


if __name__ == "__main__":
    main()
