"""egad distill: train a student from a teacher with EGAD or a baseline, then export it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from egad_cli.commands.common import run_task
from egad_cli.config import DistillConfig, cache_dir, conf_dir, register_schemas, validate
from egad_cli.data import build_splits, source_files
from egad_cli.engine.checkpoint import resolve_resume
from egad_cli.engine.distill_unit import DistillUnit
from egad_cli.engine.loop import train
from egad_cli.engine.metrics import tensorboard_available
from egad_cli.engine.runtime import Runtime, resolve_runtime
from egad_cli.errors import UserError
from egad_cli.evaluation.passes import heldout_kl
from egad_cli.models import load_models, preflight_model_source
from egad_cli.models.hub import resolve_model_ref
from egad_cli.ui.console import console

register_schemas()


def preflight(cfg: DistillConfig) -> Runtime:
    """Every cheap check before the expensive work: device, model sources, data files, resume path."""
    runtime = resolve_runtime(cfg.trainer)
    preflight_model_source(cfg.teacher)
    if cfg.student.init == "hf":
        resolve_model_ref(cfg.student.path, "student.path", cfg.student.revision)
    source_files(cfg.dataset)
    resumed = resolve_resume(cfg.trainer.resume) if cfg.trainer.resume else None
    refuse_to_overwrite(Path(cfg.run_dir), resumed)
    if cfg.logging.tensorboard:
        tensorboard_available()
    return runtime


def refuse_to_overwrite(run_dir: Path, resumed: Path | None) -> None:
    """A run dir that already holds a run is only written to when resuming that same run."""
    existing = [name for name in ("metrics.jsonl", "checkpoints", "summary.json", "student")
                if (run_dir / name).exists()]
    if existing and (resumed is None or resumed.resolve().parent.parent != run_dir.resolve()):
        raise UserError(f"hydra.run.dir: {run_dir} already holds a run ({', '.join(existing)}); nothing was "
                        f"changed. Pick a new hydra.run.dir, or continue that run with trainer.resume={run_dir}")


def total_steps(cfg: DistillConfig, runtime: Runtime) -> int:
    t = cfg.trainer
    if t.max_tokens is None:
        return t.max_steps
    per_step = t.batch_size * t.grad_accum * (cfg.dataset.block_size - 1) * runtime.world_size
    return max(1, math.ceil(t.max_tokens / per_step))


def run_distill(raw: DictConfig) -> float:
    cfg = validate(raw)
    runtime = preflight(cfg)
    run_dir = Path(cfg.run_dir)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(raw, run_dir / "config.yaml", resolve=True)
        console.rule(f"egad distill · method={cfg.method.name} · teacher={cfg.teacher.name} · student={cfg.student.name}")
    teacher, student, tokenizer, vocab = load_models(cfg, runtime, seed=cfg.trainer.seed)
    splits = build_splits(cfg.dataset, tokenizer, cache_dir(cfg.cache_dir))
    steps = total_steps(cfg, runtime)
    n_params = sum(p.numel() for p in student.parameters())
    if runtime.is_main:
        console.print(f"teacher {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M params · student "
                      f"{n_params / 1e6:.2f}M · vocab {vocab} · {len(splits.train)} train / {len(splits.val)} held-out "
                      f"blocks of {cfg.dataset.block_size} · {steps} steps on {runtime.device}")

    def kl() -> float:
        return heldout_kl(teacher, student, vocab, splits.val, runtime, cfg.eval.batch_size, cfg.eval.max_tokens,
                          cfg.loss.chunk_size)

    kl_before = kl() if cfg.eval.before else None
    unit = DistillUnit(teacher, student, vocab, cfg, runtime, steps)
    result = train(unit, splits.train, cfg.trainer, runtime, run_dir, steps, cfg.logging.progress, console,
                   tensorboard=cfg.logging.tensorboard)
    kl_after = kl()
    summary = {"method": cfg.method.name, "steps": result.steps, "train_seconds": round(result.seconds, 2),
               "tokens": result.tokens, "kl_before": kl_before, "kl_after": kl_after,
               "final": result.last_logs, "student_dir": None}
    if runtime.is_main:
        if cfg.trainer.export:
            export_dir = run_dir / "student"
            unit.student.save_pretrained(export_dir)
            tokenizer.save_pretrained(export_dir)
            summary["student_dir"] = str(export_dir)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        before = f"{kl_before:.4f}" if kl_before is not None else "n/a"
        console.print(f"held-out KL(teacher ‖ student): before {before} → after {kl_after:.4f} nats/token")
        console.print(f"student saved to {summary['student_dir'] or '(export disabled)'}; run dir {run_dir}")
    return kl_after


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="distill")
def main(cfg: DictConfig) -> float:
    torch.set_float32_matmul_precision("high")
    return run_task(run_distill, cfg)
