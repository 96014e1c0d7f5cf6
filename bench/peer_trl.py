"""egad vs TRL's GKDTrainer on identical work: same teacher, same student init, same batches, same loss.

Both do plain forward-KL distillation at T = 1 (egad `method=kd`; TRL GKDTrainer with lmbda = 0
(never on-policy), beta = 0 (forward KL), temperature = 1, seq_kd off), batch 4 x 128 tokens, at the
precision egad's trainer.precision resolves to (auto: bf16 on a CPU with native bf16 matmuls; TRL gets bf16=True then),
grad clip 1.0, AdamW at the same lr/betas/weight decay. The two steps alternate in one process
(egad, TRL, egad, TRL, ...) so that the shared machine's load hits both alike; each side's first
step is a warm-up and is not timed.

What a step is, on each side:
  egad: ``engine.loop.train_step`` — exactly what `egad distill` runs per step (plan, chunked loss,
        backward, clip, AdamW, schedule);
  TRL:  ``trainer.training_step`` (teacher + student forward, GKD loss, backward through accelerate),
        then clip, ``optimizer.step``, ``lr_scheduler.step``, ``zero_grad`` — the body of
        ``transformers.Trainer``'s inner loop, without its logging and callbacks.

It also checks that the two compute the same loss at step 1 (printed), and prints a roofline line:
the step's matmul FLOPs (teacher forward, student forward + backward, the lm_heads in the loss)
divided by egad's step time, against this machine's measured matmul FLOP/s at the run's precision.
Both precisions: run it with trainer.precision=fp32 and with trainer.precision=bf16.

The allocator setting egad makes on a CPU (engine.host_memory: glibc keeps freed blocks for the next step) is
process-wide, so in this one process TRL gets it too, and TRL's step, which allocates many [B, L, V] tensors,
gains more from it than egad's. The ratio printed is for the same allocator on both sides; for glibc's defaults on
both, run it with EGAD_KEEP_FREED_MEMORY=0 (docs/performance.md gives both).

Needs the optional `bench` extra (`pip install -e '.[bench]'`, installs trl); skipped with a message
when trl is not installed. Usage: python bench/peer_trl.py [--steps 10] [distill overrides...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time

import torch


def matmul_flops_per_s(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """This machine's dense matmul throughput (FLOP/s) at [n, n] @ [n, n], the best of `repeats` (the
    peak: on a shared machine the typical call is slower, so the fraction below is a lower bound)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up (thread pool, packing buffers)
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def model_flops(model, batch: int, length: int, backward: bool) -> float:
    """Matmul FLOPs of a decoder over batch x length tokens, lm_head included (x3 with backward):
    2 · (weights used in matmuls) per token, plus attention's QKᵀ and AV under the causal mask
    (2 · 2 · d · length/2 per layer and token). Element-wise work (norms, softmaxes, the loss) is not counted."""
    cfg = model.config
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    matmul = sum(p.numel() for p in model.parameters() if p.ndim == 2 and p is not emb)
    if head is emb:  # tied: the embedding is also the lm_head matmul
        matmul += emb.numel()
    per_token = 2 * matmul + 2 * cfg.num_hidden_layers * cfg.hidden_size * length
    return per_token * batch * length * (3 if backward else 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side (after one warm-up each)")
    ap.add_argument("overrides", nargs="*", help="egad distill overrides (teacher=, student=, trainer.batch_size=...)")
    args = ap.parse_args()
    try:
        import trl
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        print("bench/peer_trl.py: skipped: trl is not installed (pip install -e '.[bench]')")
        return

    import datasets
    from hydra import compose, initialize_config_dir

    from egad_cli.config import cache_dir, conf_dir, register_schemas, validate
    from egad_cli.data import build_splits
    from egad_cli.engine.distill_unit import DistillUnit
    from egad_cli.engine.loop import train_step
    from egad_cli.engine.optim import build_optimizer
    from egad_cli.engine.runtime import resolve_runtime
    from egad_cli.engine.sampler import BlockSampler
    from egad_cli.models import load_models

    register_schemas()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = validate(compose("distill", overrides=["method=kd", *args.overrides, "run_dir=/tmp/egad-bench"]))
    tr = cfg.trainer
    if cfg.temperature.base != 1.0 or cfg.method.ce_weight != 0 or tr.grad_accum != 1:
        sys.exit("peer_trl: compares plain KD at T = 1 without CE and grad_accum = 1; drop those overrides")
    runtime = resolve_runtime(tr)
    total = args.steps + 1
    teacher, student, tokenizer, vocab = load_models(cfg, runtime, seed=tr.seed)
    trl_student = copy.deepcopy(student)  # the same initial weights on both sides
    splits = build_splits(cfg.dataset, tokenizer, cache_dir(cfg.cache_dir))
    sampler = BlockSampler(len(splits.train), tr.batch_size, tr.seed)
    batches = [sampler.batch(splits.train, s, runtime.device) for s in range(total)]

    # egad: the engine step
    unit = DistillUnit(teacher, student, vocab, cfg, runtime, total)
    opt, sched = build_optimizer(unit.named_trainable(), tr, total)
    params = [p for _, p, _ in unit.named_trainable()]

    def egad_step(step: int) -> float:
        logs, _ = train_step(unit, [batches[step]], step, total, opt, sched, params, tr, runtime)
        return logs["loss"]

    # TRL: its trainer, its optimizer, its loss; our batches as its collated inputs
    def trl_inputs(mb: dict) -> dict:
        labels = mb["ids"].masked_fill(~mb["mask"].bool(), -100)
        return {"input_ids": mb["ids"], "attention_mask": torch.ones_like(mb["ids"]), "labels": labels}

    out_dir = tempfile.mkdtemp(prefix="egad-peer-trl-")
    # the same precision on both sides: with trainer.precision=bf16 (or auto where it picks bf16) egad runs its
    # teacher in bf16 under bf16 autocast; TRL gets that same bf16 teacher and its own bf16=True (autocast)
    bf16 = runtime.precision.name == "bf16"
    trl_args = GKDConfig(
        output_dir=out_dir, lmbda=0.0, beta=0.0, temperature=1.0, seq_kd=False,
        per_device_train_batch_size=tr.batch_size, learning_rate=tr.lr, weight_decay=tr.weight_decay,
        adam_beta1=tr.beta1, adam_beta2=tr.beta2, max_grad_norm=tr.grad_clip, max_steps=total,
        warmup_steps=tr.warmup_steps, lr_scheduler_type="cosine", bf16=bf16, fp16=False,
        use_cpu=runtime.device.type == "cpu", report_to=[], logging_strategy="no", save_strategy="no",
        disable_dropout=True, seed=tr.seed, max_length=cfg.dataset.block_size)
    dummy = datasets.Dataset.from_dict({"input_ids": [[0]]})
    trainer = GKDTrainer(model=trl_student, teacher_model=teacher, args=trl_args, train_dataset=dummy,
                         processing_class=tokenizer, data_collator=lambda rows: rows)
    trainer.create_optimizer_and_scheduler(num_training_steps=total)
    model = trainer.model

    def trl_step(step: int) -> float:
        inputs = trl_inputs(batches[step])
        n_items = int((inputs["labels"][:, 1:] != -100).sum())
        model.train()
        loss = trainer.training_step(model, inputs, num_items_in_batch=n_items)
        trainer.accelerator.clip_grad_norm_(model.parameters(), tr.grad_clip)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad(set_to_none=True)
        return float(loss)

    times: dict[str, list[float]] = {"egad": [], "trl": []}
    first: dict[str, float] = {}
    for step in range(total):
        for name, fn in (("egad", egad_step), ("trl", trl_step)):
            t0 = time.perf_counter()
            loss = fn(step)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            if step == 0:
                first[name] = loss
            else:
                times[name].append(time.perf_counter() - t0)

    tokens = tr.batch_size * cfg.dataset.block_size
    med = {k: statistics.median(v) for k, v in times.items()}
    optim = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    print(f"peer benchmark: teacher={cfg.teacher.name} student={cfg.student.name} batch={tr.batch_size}x"
          f"{cfg.dataset.block_size} device={runtime.device} torch={torch.__version__} trl={trl.__version__} "
          f"threads={torch.get_num_threads()}, precision {runtime.precision.describe()} (TRL bf16={bf16}), "
          f"median of {args.steps} alternating steps")
    print(f"host memory (one process, so both sides): {runtime.host_memory}")
    print(f"step-1 loss: egad {first['egad']:.6f}, TRL {first['trl']:.6f} (same batch, same init; "
          f"TRL optimizer {type(optim).__name__} fused={optim.defaults.get('fused')})")
    print(f"{'trainer':<8}{'s/step':>10}{'tokens/s':>10}{'× TRL':>8}")
    for name in ("egad", "trl"):
        print(f"{name:<8}{med[name]:>10.3f}{tokens / med[name]:>10.0f}{med['trl'] / med[name]:>8.2f}")

    # Roofline: matmul FLOPs of one egad kd step over its time, against measured matmul peaks.
    t_fwd = model_flops(teacher, tr.batch_size, cfg.dataset.block_size, backward=False)
    s_all = model_flops(student, tr.batch_size, cfg.dataset.block_size, backward=True)
    flops = t_fwd + s_all
    peak32 = matmul_flops_per_s(torch.float32)
    peak16 = matmul_flops_per_s(torch.bfloat16)
    achieved = flops / med["egad"]
    peak, name = (peak16, "bf16") if bf16 else (peak32, "fp32")
    print(f"roofline: {flops / 1e9:.1f} GFLOP per step (teacher fwd {t_fwd / 1e9:.1f}, student fwd+bwd "
          f"{s_all / 1e9:.1f}) / {med['egad']:.3f} s = {achieved / 1e9:.1f} GFLOP/s; measured matmul peak "
          f"fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s; at this run's precision ({name}) "
          f"{achieved / peak:.0%} of its peak, {med['egad'] / (flops / peak):.1f}x its matmul limit "
          f"({flops / peak:.3f} s)")


if __name__ == "__main__":
    main()
