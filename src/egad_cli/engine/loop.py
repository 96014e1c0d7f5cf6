"""The one training loop every command shares. A unit supplies: plan (no-grad pass over the
step's micro-batches: teacher, policies, global denominators) -> loss per micro-batch -> end_step."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from egad_cli.config.schema import TrainerConfig
from egad_cli.data.packing import Packed
from egad_cli.engine import parallel
from egad_cli.engine.checkpoint import global_batch_problem, load_checkpoint, resolve_resume, save_checkpoint
from egad_cli.engine.metrics import MetricsWriter, read_metrics
from egad_cli.engine.normalization import backward
from egad_cli.engine.optim import build_optimizer
from egad_cli.engine.runtime import Runtime, rng_state, seed_everything, set_rng_state
from egad_cli.engine.sampler import BlockSampler
from egad_cli.errors import Interrupted, UserError
from egad_cli.ui.progress import TrainProgress


class Unit(Protocol):
    def named_trainable(self) -> list[tuple[str, nn.Parameter, float]]: ...  # (name, param, lr multiplier)
    def modules(self) -> dict[str, nn.Module]: ...  # checkpointed modules
    def plan(self, micro_batches: list[dict], progress: float) -> Any: ...
    def loss(self, plan: Any, index: int) -> tuple[torch.Tensor, dict[str, float]]: ...
    def end_step(self, step: int, logs: dict[str, float]) -> dict[str, float]: ...
    def no_sync(self) -> contextlib.AbstractContextManager: ...  # DDP: no gradient all-reduce for this micro-batch
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class NonFiniteLoss(UserError):
    pass


@dataclass
class TrainResult:
    steps: int
    last_logs: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0
    #: writes the checkpoint of the last step (train() calls it unless final_checkpoint=False)
    save_checkpoint: Callable[[], Path | None] = lambda: None


def train(unit: Unit, data: Packed, cfg: TrainerConfig, runtime: Runtime, run_dir: Path, total_steps: int,
          progress: bool = True, console=None, tensorboard: bool = False, final_checkpoint: bool = True,
          evaluate: Callable[[], dict[str, float]] | None = None, eval_every: int = 0) -> TrainResult:
    """Train to `total_steps`. final_checkpoint=False leaves the last step's checkpoint to the caller
    (``result.save_checkpoint()``), so it can write the student and summary first: when the disk
    fills up, the export is what must survive. evaluate: called (on every rank) after each eval_every-th
    step before the last; its numbers go to metrics.jsonl as a row of their own at that step. It must not
    touch the RNGs or the optimizer (the held-out pass does neither), so a run trains the same with it."""
    seed_everything(cfg.seed)
    optimizer, scheduler = build_optimizer(unit.named_trainable(), cfg, total_steps)
    sampler = BlockSampler(len(data), cfg.batch_size, cfg.seed, runtime.rank, runtime.world_size)
    ckpt_root = run_dir / "checkpoints"
    start, history, done_tokens, done_seconds = 0, [], 0, 0.0
    sequences_per_step = cfg.batch_size * cfg.grad_accum * runtime.world_size
    if cfg.resume:
        ckpt = resolve_resume(cfg.resume, warn=console.print if console is not None and runtime.is_main else None)
        restored = _restore(ckpt, unit, optimizer, scheduler, sequences_per_step)
        start = int(restored["step"])
        # the whole run's totals in summary.json, not only this segment's
        done_tokens, done_seconds = int(restored.get("tokens", 0)), float(restored.get("seconds", 0.0))
        history = _history(ckpt.parent.parent / "metrics.jsonl", start)
        if console is not None and runtime.is_main:
            console.print(f"resumed from step {start} ({ckpt})")
    metrics = MetricsWriter(run_dir / "metrics.jsonl", runtime.is_main, history=history, tensorboard=tensorboard)

    def checkpoint(step: int) -> Path | None:
        # Full, FQN-keyed states (fsdp: gathered from every rank, so every rank takes part): a checkpoint
        # resumes at any world size and strategy. Unsharded (single, ddp): rank 0 alone, no collective.
        if not runtime.is_main and runtime.strategy != "fsdp":
            return None
        modules = unit.modules()
        state = {"step": step, "modules": {k: parallel.full_model_state(m) for k, m in modules.items()},
                 "optimizer": parallel.full_optimizer_state(nn.ModuleDict(modules), optimizer),
                 "scheduler": scheduler.state_dict(), "rng": rng_state(), "unit": unit.state_dict(),
                 "tokens": result.tokens, "seconds": done_seconds + time.perf_counter() - t_start,
                 "sequences_per_step": sequences_per_step}
        if not runtime.is_main:
            return None
        return save_checkpoint(ckpt_root, step, state, cfg.keep_ckpts)

    result = TrainResult(steps=start, tokens=done_tokens, save_checkpoint=lambda: checkpoint(result.steps))
    trained = [row for row in history if "loss" in row]  # not the held-out KL rows (eval.every)
    if trained:  # resuming a finished run reports its last logged step, not nothing
        result.last_logs = {k: v for k, v in trained[-1].items() if k != "step"}
    bar = TrainProgress(total_steps, start, enabled=progress, console=console if runtime.is_main else None)
    params = [p for _, p, _ in unit.named_trainable() if p.requires_grad]
    t_start, window_tokens, window_start = time.perf_counter(), 0, time.perf_counter()
    step = start
    try:
        with bar:
            for step in range(start, total_steps):
                micro = [sampler.batch(data, step * cfg.grad_accum + i, runtime.device) for i in range(cfg.grad_accum)]
                logs, grad_norm = train_step(unit, micro, step, total_steps, optimizer, scheduler, params, cfg, runtime,
                                             checkpoints=ckpt_root)
                tokens = sum(int(mb["ids"].numel()) for mb in micro) * runtime.world_size
                window_tokens += tokens
                result.tokens += tokens
                done = step + 1
                result.steps, result.last_logs = done, logs
                if done % cfg.log_every == 0 or done == total_steps:
                    now = time.perf_counter()
                    row = {"step": done, **logs, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                           "tokens_per_s": window_tokens / max(now - window_start, 1e-9)}
                    metrics.write(row)
                    bar.update(done, row)
                    window_tokens, window_start = 0, now
                else:
                    bar.update(done, None)
                if evaluate is not None and eval_every and done % eval_every == 0 and done < total_steps:
                    started = time.perf_counter()
                    measured = evaluate()
                    if measured:
                        metrics.write({"step": done, **measured, "eval_seconds": time.perf_counter() - started})
                    window_start += time.perf_counter() - started  # tokens_per_s counts training time only
                if cfg.ckpt_every and done % cfg.ckpt_every == 0 and done < total_steps:
                    checkpoint(done)
        if final_checkpoint:
            checkpoint(total_steps)
    except KeyboardInterrupt:
        if runtime.strategy == "fsdp":
            # Gathering a checkpoint is a collective, and on Ctrl-C the ranks may each be at a different
            # point of the step (one inside an all-gather): waiting for each other could hang. Keep the last
            # periodic checkpoint instead.
            raise Interrupted(f"interrupted at step {result.steps}; under trainer.strategy=fsdp no checkpoint is "
                              f"written on interrupt. Resume from the last periodic one (trainer.ckpt_every) with "
                              f"trainer.resume={run_dir}") from None
        path = checkpoint(result.steps)
        raise Interrupted(f"interrupted at step {result.steps}; checkpoint {path}. Resume with "
                          f"trainer.resume={run_dir}") from None
    result.seconds = done_seconds + time.perf_counter() - t_start
    return result


def train_step(unit: Unit, micro: list[dict], step: int, total_steps: int, optimizer, scheduler,
               params: list[nn.Parameter], cfg: TrainerConfig, runtime: Runtime, checkpoints: Path | None = None
               ) -> tuple[dict[str, float], torch.Tensor]:
    """One optimizer step on the step's micro-batches: plan, loss + backward per micro-batch, clip,
    AdamW, schedule, the policies' step end. Returns (the step's logs, the pre-clip grad norm).
    The loop and the benchmarks (bench/) run this same function. The logs include the step's wall time
    split: ``time_plan_s`` (the no-grad plan: teacher, statistics, policies, on-policy sampling) of
    ``time_step_s`` (the whole step)."""
    started = time.perf_counter()
    with torch.no_grad(), runtime.autocast():
        plan = unit.plan(micro, step / total_steps)
    planned = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    logs: dict[str, float] = {}
    for i in range(len(micro)):
        last = i == len(micro) - 1
        with contextlib.nullcontext() if last else unit.no_sync():  # DDP: one all-reduce a step
            with runtime.autocast():
                loss, parts = unit.loss(plan, i)
            backward(loss, runtime)  # global denominators: see engine.normalization
        for k, v in parts.items():  # parts are already globally normalised: sums are step values
            logs[k] = logs.get(k, 0.0) + v
    logs = runtime.reduce_logs(logs)
    if not math.isfinite(logs["loss"]):
        where = f". Checkpoints so far are in {checkpoints}" if checkpoints is not None else ""
        raise NonFiniteLoss(f"non-finite loss at step {step + 1} ({_fmt(logs)}); lower trainer.lr, "
                            f"raise temperature.t_min, or use trainer.precision=fp32{where}")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    optimizer.step()
    scheduler.step()
    logs["time_plan_s"], logs["time_step_s"] = planned - started, time.perf_counter() - started
    logs.update(unit.end_step(step + 1, logs))
    return logs, grad_norm


def _restore(path: Path, unit: Unit, optimizer, scheduler, sequences_per_step: int) -> dict:
    """Load the checkpoint into the unit, optimizer, scheduler and RNGs; returns its state tree.

    Any world size and strategy can resume any checkpoint (the states are full and keyed by name), as long
    as a step still reads the same sequences: trainer.batch_size × grad_accum × world size is unchanged, so
    step s trains on the same global batch as the run that wrote it."""
    state = load_checkpoint(path)
    saved = state.get("sequences_per_step")  # checked before any model loaded (commands/distill.py); again here
    problem = global_batch_problem(path, int(saved), sequences_per_step) if saved is not None else None
    if problem:
        raise UserError(problem)
    modules = unit.modules()
    try:
        for name, module in modules.items():
            if name not in state["modules"]:
                raise UserError(f"trainer.resume: checkpoint {path} has no {name!r} state (a different method?)")
            parallel.load_model_state(module, state["modules"][name])
        parallel.load_optimizer_state(nn.ModuleDict(modules), optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        unit.load_state_dict(state["unit"])
        set_rng_state(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"trainer.resume: checkpoint {path} does not fit this run's model, method or optimizer "
                        f"({first}); resume with the run's own settings (its config.yaml), or start a new run") from None
    return state


def _history(path: Path, upto: int) -> list[dict]:
    """The metrics rows of the run we resume from, up to its checkpoint: the new run continues that curve."""
    return [r for r in read_metrics(path) if r.get("step", 0) <= upto] if path.is_file() else []


def _fmt(logs: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in logs.items())
