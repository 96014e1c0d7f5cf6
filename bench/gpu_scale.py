"""egad at real shapes on one GPU: tokens/s, peak memory and MFU for kd and egad, with and without compile.

Random-weight Llama models built from configs (no download): by default the teacher has Llama-3.1-8B's shape,
the student Llama-3.2-1B's, V = 128,256, sequences of 2,048 tokens, bf16 autocast (the student's master
weights and AdamW state stay fp32). Each variant runs the real engine step (``engine.loop.train_step``:
teacher pass, policies, chunked loss, backward, clip, AdamW) for --warmup steps, then --steps timed steps.

  MFU = (teacher forward + 3 × student forward FLOPs) per step / step time / measured bf16 matmul peak

A forward's FLOPs per token are 2 × (its matmul parameters: attention and MLP projections, and the lm_head
V × D) + the attention's score and value products, 4 · S · D per layer for a full S × S square, of which a
causal kernel computes half: 2 · S · D per layer. The bf16 peak is measured here (the best of a few
8192³ bf16 matmuls), not taken from a datasheet. egad's extra passes (statistics, features) are work kd does
not do, so they lower egad's MFU: the count is of the useful FLOPs, the same for both.

One command on a GPU machine:   python bench/gpu_scale.py
A CPU dry run of the code path: python bench/gpu_scale.py --tiny --device cpu --steps 2 --warmup 1
The loss's own memory target (≤ 1/8 of the naive full-vocabulary loss at 8,192 tokens):
                                python bench/loss_kernel.py --tokens 8192 --vocab 128256 --student-dim 2048 --teacher-dim 4096
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM, LlamaConfig

from egad_cli.config import conf_dir, register_schemas, validate
from egad_cli.data.packing import Packed
from egad_cli.engine import parallel
from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.loop import train_step
from egad_cli.engine.optim import build_optimizer
from egad_cli.engine.runtime import resolve_runtime
from egad_cli.engine.sampler import BlockSampler

SHAPES = {  # (hidden, layers, heads, kv heads, intermediate, tied embeddings)
    "llama-3.1-8b": (4096, 32, 32, 8, 14336, False),
    "llama-3.2-1b": (2048, 16, 32, 8, 8192, True),
    "tiny-teacher": (256, 4, 4, 2, 512, False),
    "tiny-student": (128, 2, 4, 2, 256, True),
}


def build(shape: str, vocab: int, seq: int, seed: int) -> torch.nn.Module:
    hidden, layers, heads, kv, inter, tied = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                         max_position_embeddings=max(seq, 2048), tie_word_embeddings=tied, rope_theta=500000.0)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def forward_flops_per_token(model: torch.nn.Module, seq: int) -> float:
    """2 × matmul parameters (every Linear, lm_head included; embeddings are a lookup) + causal attention."""
    c = model.config
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 2.0 * matmul + 2.0 * c.num_hidden_layers * seq * c.hidden_size


def bf16_peak_flops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2.0 * n**3 / best


def run_variant(method: str, compile_: bool, teacher, student0, data: Packed, args, runtime) -> dict:
    overrides = [f"method={method}", "teacher=random", "student=tiny", f"trainer.batch_size={args.batch}",
                 f"dataset.block_size={args.seq}", f"trainer.compile={str(compile_).lower()}",
                 f"trainer.device={args.device}", "trainer.precision=" + ("bf16" if runtime.device.type == "cuda"
                                                                         else "fp32"),
                 "run_dir=/tmp/egad-gpu-bench", *args.overrides]
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = validate(compose("distill", overrides=overrides))
    student = copy.deepcopy(student0).to(runtime.device)
    total = args.warmup + args.steps
    unit = DistillUnit(teacher, student, args.vocab, cfg, runtime, total)
    opt, sched = build_optimizer(unit.named_trainable(), cfg.trainer, total)
    params = [p for _, p, _ in unit.named_trainable()]
    sampler = BlockSampler(len(data), args.batch, 0)
    times = []
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for step in range(total):
        mb = [sampler.batch(data, step, runtime.device)]
        t0 = time.perf_counter()
        logs, _ = train_step(unit, mb, step, total, opt, sched, params, cfg.trainer, runtime)
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if runtime.device.type == "cuda" else float("nan")
    del unit, opt, sched, student
    if runtime.device.type == "cuda":
        torch.cuda.empty_cache()
    return {"s_step": statistics.median(times), "peak_gib": peak, "loss": logs["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="llama-3.1-8b", choices=SHAPES)
    ap.add_argument("--student", default="llama-3.2-1b", choices=SHAPES)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, V = 4096, S = 256: a dry run of the code path")
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens here)")
    ap.add_argument("--methods", default="kd,egad")
    ap.add_argument("--compile", default="both", choices=("off", "on", "both"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("overrides", nargs="*", help="more hydra overrides for every variant")
    args = ap.parse_args()
    if args.tiny:
        args.teacher, args.student, args.vocab, args.seq = "tiny-teacher", "tiny-student", 4096, 256
    register_schemas()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        base = validate(compose("distill", overrides=["teacher=random", f"trainer.device={args.device}",
                                                      "run_dir=/tmp/egad-gpu-bench"]))
    runtime = resolve_runtime(base.trainer)
    if runtime.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    teacher = build(args.teacher, args.vocab, args.seq, seed=1).to(runtime.device, runtime.teacher_dtype)
    teacher.requires_grad_(False).eval()
    student0 = build(args.student, args.vocab, args.seq, seed=2)
    n_blocks = max(64, args.batch * (args.warmup + args.steps))
    gen = torch.Generator().manual_seed(0)
    data = Packed(ids=torch.randint(0, args.vocab, (n_blocks, args.seq), generator=gen),
                  mask=torch.ones(n_blocks, args.seq, dtype=torch.bool))
    tokens = args.batch * args.seq
    flops = tokens * (forward_flops_per_token(teacher, args.seq) + 3 * forward_flops_per_token(student0, args.seq))
    peak = bf16_peak_flops(runtime.device)
    name = torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else "cpu"
    print(f"gpu_scale: {name}; teacher {args.teacher}, student {args.student}, V={args.vocab}, "
          f"{args.batch} × {args.seq} tokens/step; useful FLOPs/step {flops / 1e12:.1f} T; "
          f"measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s; median of {args.steps} steps after {args.warmup}")
    print(f"{'method':<8}{'compile':>8}{'s/step':>10}{'tokens/s':>11}{'peak GiB':>10}{'MFU':>8}{'× kd':>7}")
    ref = {}
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for compile_ in compiles:
        if compile_:  # the teacher's layers, as `egad distill trainer.compile=true` does (in place: last)
            parallel.prepare_teacher(teacher, runtime, compile=True)
        for method in args.methods.split(","):
            r = run_variant(method, compile_, teacher, student0, data, args, runtime)
            if method == "kd":
                ref.setdefault(compile_, r["s_step"])
            ratio = r["s_step"] / ref[compile_] if compile_ in ref else float("nan")
            print(f"{method:<8}{compile_!s:>8}{r['s_step']:>10.3f}{tokens / r['s_step']:>11.0f}"
                  f"{r['peak_gib']:>10.1f}{flops / r['s_step'] / peak:>8.1%}{ratio:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
