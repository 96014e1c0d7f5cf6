"""What a teacher cache costs and saves: building it against the teacher's forward, and a training step from
it against one with the live teacher.

In one process, on the same models and batches:
* build vs forward: for each cache kind (exact, the default; sampled; topk), the seconds per batch of
  `egad cache`'s per-batch work (``teacher_rows``: the forward, then one log-softmax per chunk feeding
  the entropies, and for the compact kinds the top-k, tail sums and draws; exact: its final states, the
  only ones here) against the teacher's plain forward with its logits (``teacher(input_ids).logits``),
  taking turns batch by batch (so a load on the machine falls on both alike); the median ratio;
* `egad cache` end to end over the first --blocks training blocks of the embedded corpus (SmolLM2
  teacher, the default settings: exact, with the states egad's dual branch reads);
* for kd and egad the median seconds of a full engine step (plan, loss, backward, AdamW) with the live
  teacher and with the cache.
Usage: python bench/cache_speed.py [--blocks 64] [--steps 8] [--build-batches 8]
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
from egad_cli.config import cache_dir, conf_dir, register_schemas, validate
from egad_cli.config.commands import CacheCommandConfig
from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.runtime import resolve_runtime
from egad_cli.models import load_models
from egad_cli.teacher_cache.use import open_cached_teacher

METHODS = ("kd", "egad")
KINDS = ("exact", "sampled", "topk")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=64, help="training blocks in the cache")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--build-batches", type=int, default=8, help="batches timed for build vs forward")
    ap.add_argument("--only-build", action="store_true", help="only the build-vs-forward comparison")
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
    build_vs_forward(ccfg, args.build_batches)
    if args.only_build:
        return
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
          f"step, {runtime.device} {runtime.precision.describe()}, median of {args.steps} steps")
    print(f"build: {build_s:.1f} s for {n_tokens:,} tokens ({n_tokens / build_s:.0f} tokens/s, "
          f"{build_s / n_tokens * tokens:.2f} s per step's worth of tokens), {cache_job.describe_kind(cached.manifest)}, "
          f"states for {len(cached.manifest['layers'])} layers")
    print(f"{'method':<8}{'live s/step':>13}{'cache s/step':>14}{'live / cache':>14}")
    for method, live, cache in rows:
        print(f"{method:<8}{live:>13.3f}{cache:>14.3f}{live / cache:>14.2f}")


@torch.no_grad()
def build_vs_forward(ccfg: CacheCommandConfig, n_batches: int) -> None:
    """Seconds per batch of the cache's per-batch work for each kind against the plain teacher forward."""
    from egad_cli.data import build_splits
    from egad_cli.models import load_frozen_teacher
    from egad_cli.teacher_cache.build import block_uniforms, teacher_rows

    runtime = cache_job.runtime_of(ccfg)
    teacher, tok = load_frozen_teacher(ccfg, runtime)
    vocab = len(tok)
    data = build_splits(ccfg.dataset, tok, cache_dir(ccfg.cache_dir)).train
    bs, length = ccfg.batch_size, data.ids.shape[1]
    final = teacher.config.num_hidden_layers
    plans = {kind: {"kind": kind, "k": 4 if kind == "sampled" else 48,
                    "exponents": list(ccfg.exponents), "entropy_temps": list(ccfg.entropy_temps), "layers": [],
                    "draws": ccfg.draws, "seed": 0} for kind in KINDS}
    plans["exact"].update(layers=[final], final_layer=final, state_quant="none")
    times: dict[str, list[float]] = {"forward": [], **{kind: [] for kind in KINDS}}
    for b in range(n_batches + 1):  # the first batch warms up (allocator, kernels) and is not counted
        ids = data.ids[b * bs:(b + 1) * bs]
        uniforms = torch.stack([block_uniforms(0, "train", b * bs + j, length - 1, ccfg.draws) for j in range(bs)])
        for name, spent in times.items():
            t0 = time.perf_counter()
            if name == "forward":
                teacher(input_ids=ids).logits.float()
            else:
                teacher_rows(teacher, ids, vocab, plans[name], torch.float16, ccfg.chunk_size, uniforms)
            if b:
                spent.append(time.perf_counter() - t0)
    fwd = statistics.median(times["forward"])
    print(f"build vs forward ({n_batches} batches of {bs}x{length} tokens, median s/batch): forward {fwd:.3f}; "
          + "; ".join(f"{kind} {statistics.median(times[kind]):.3f} "
                      f"({statistics.median(t / f for t, f in zip(times[kind], times['forward'])):.2f}x)"
                      for kind in KINDS), flush=True)
    del teacher


if __name__ == "__main__":
    main()
