"""The work of `egad distill` once its config is valid: load, train, export (imports torch and transformers)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from egad_cli.config import ConfigError, DistillConfig, cache_dir
from egad_cli.config.policies import PolicyContext
from egad_cli.config.problems import Problems
from egad_cli.data import build_splits, check_sources
from egad_cli.data.alignment import aligned_share
from egad_cli.engine import parallel
from egad_cli.engine.checkpoint import list_checkpoints, resolve_resume
from egad_cli.engine.distill_unit import DistillUnit, build_policies, policy_needs
from egad_cli.engine.loop import train
from egad_cli.engine.metrics import tensorboard_available
from egad_cli.engine.onpolicy import build_rollout
from egad_cli.engine.runtime import Runtime, resolve_runtime
from egad_cli.errors import UserError, check_writable
from egad_cli.evaluation.passes import cached_heldout_kl, heldout_kl
from egad_cli.losses.cross_vocab import vocab_map
from egad_cli.models import (
    check_context,
    load_models,
    preflight_model_source,
    preflight_student_source,
)
from egad_cli.models.loading import load_teacher_tokenizer
from egad_cli.models.setup import load_student_for_cache, student_tokenizer_of
from egad_cli.models.students import student_layer_count
from egad_cli.teacher_cache.manifest import describe_kind
from egad_cli.teacher_cache.use import check_fits, fit_warnings, open_cached_teacher
from egad_cli.ui.console import console


def preflight(cfg: DistillConfig) -> Runtime:
    """Every cheap check before the expensive work: device, model sources, data files, resume path."""
    runtime = resolve_runtime(cfg.trainer)
    parallel.preflight_attention(cfg.trainer.attention, runtime)
    if not cfg.teacher_cache:  # from a cache, neither the teacher nor the corpus is read
        preflight_model_source(cfg.teacher)
        check_sources(cfg.dataset)
    elif cfg.student.init == "from_teacher":
        raise UserError("student.init=from_teacher copies the teacher's layers, which a teacher cache does not "
                        "hold; use student=tiny/small/hf with teacher_cache=…, or drop teacher_cache")
    preflight_student_source(cfg.student)
    check_writable(cache_dir(cfg.cache_dir), "cache_dir")
    resumed = resolve_resume(cfg.trainer.resume) if cfg.trainer.resume else None
    refuse_to_overwrite(Path(cfg.run_dir), resumed)
    check_writable(Path(cfg.run_dir), "hydra.run.dir")  # fail now, not after loading the models
    if cfg.logging.tensorboard:
        tensorboard_available()
    return runtime


def refuse_to_overwrite(run_dir: Path, resumed: Path | None) -> None:
    """A run dir that already holds a run is only written to when resuming that same run."""
    existing = [name for name in ("metrics.jsonl", "checkpoints", "summary.json", "student")
                if (run_dir / name).exists()]
    if existing and (resumed is None or resumed.resolve().parent.parent != run_dir.resolve()):
        resume = (f", or continue that run with trainer.resume={run_dir}"
                  if list_checkpoints(run_dir / "checkpoints") else " (it has no checkpoint to continue from)")
        raise UserError(f"hydra.run.dir: {run_dir} already holds a run ({', '.join(existing)}); nothing was "
                        f"changed. Pick a new hydra.run.dir{resume}")


def check_cross_config(cfg: DistillConfig, why: str) -> None:
    """The config checks of a cross-tokenizer run (``DistillConfig.cross_problems``), for a run that turned out to
    be one after validation (a student=hf with another tokenizer): the same error validation gives."""
    out = Problems()
    cfg.cross_problems(why, out)
    if out:
        raise ConfigError.listing(out)


def total_steps(cfg: DistillConfig, runtime: Runtime) -> int:
    t = cfg.trainer
    if t.max_tokens is None:
        return t.max_steps
    per_step = t.batch_size * t.grad_accum * (cfg.dataset.block_size - 1) * runtime.world_size
    return max(1, math.ceil(t.max_tokens / per_step))


def run(cfg: DistillConfig, raw: DictConfig) -> float:
    """Train and export, for a validated config (``raw``: the same, as saved to config.yaml)."""
    torch.set_float32_matmul_precision("high")
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    runtime = preflight(cfg)
    steps = total_steps(cfg, runtime)
    cached = None
    if cfg.teacher_cache:  # can the cache serve this run? (before anything is written or built)
        cached = open_cached_teacher(cfg.teacher_cache)
        ctx = PolicyContext(vocab_size=int(cached.manifest["vocab_size"]), total_steps=steps)
        check_fits(cfg, cached.manifest, cached.root, policy_needs(build_policies(cfg, ctx)),
                   student_layer_count(cfg.student))
    run_dir = Path(cfg.run_dir)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(raw, run_dir / "config.yaml", resolve=True)
        console.rule(f"egad distill · method={cfg.method.name} · teacher={cfg.teacher.name} · student={cfg.student.name}")
        for warning in fit_warnings(cfg, cached.manifest) if cached is not None else ():
            console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    s_tok = vmap = None  # the student's own tokenizer and the shared strings (cross-tokenizer runs)
    if cached is not None:
        teacher, tokenizer, train_data = None, cached.tokenizer, cached.train.packed()
        student, s_tok, vocab = load_student_for_cache(cfg, cached, runtime, seed=cfg.trainer.seed)
        n_val = cached.val.n_blocks if cached.val is not None else 0
        source = f"teacher cache {cached.root} ({describe_kind(cached.manifest)})"
    else:
        # The corpus first, with the teacher's tokenizer alone: a file it refuses (not UTF-8, a bad jsonl
        # record) is reported before the teacher's weights load (minutes for a large one)
        tokenizer = load_teacher_tokenizer(cfg.teacher, cache_dir(cfg.cache_dir), console if runtime.is_main else None)
        # a student with its own tokenizer (trained here for student.tokenizer=train): a cross-tokenizer run
        s_tok = student_tokenizer_of(cfg, tokenizer, console if runtime.is_main else None)
        if s_tok is not None and cfg.student.tokenizer is None:  # a student=hf of another family: known only now
            check_cross_config(cfg, f"student.path={cfg.student.path} (its own tokenizer)")
        splits = build_splits(cfg.dataset, tokenizer, cache_dir(cfg.cache_dir), student_tokenizer=s_tok)
        if s_tok is not None:
            check_alignment(splits.train, cfg.cross.min_aligned)
        teacher, student, tokenizer, vocab = load_models(cfg, runtime, seed=cfg.trainer.seed, s_tok=s_tok)
        if s_tok is not None:
            vmap = vocab_map(tokenizer, s_tok, vocab, len(s_tok))
            if runtime.is_main:
                console.print(f"cross-tokenizer: the student's {len(s_tok)}-token vocabulary shares "
                              f"{vmap.t_ids.numel()} token strings with the teacher's {vocab}; "
                              f"{aligned_share(splits.train):.1%} of the student's training tokens align with the "
                              f"teacher's (docs/cross-tokenizer.md)")
        check_context(cfg.dataset.block_size, "dataset.block_size", teacher=teacher, student=student)
        parallel.set_attention(teacher, cfg.trainer.attention)
        parallel.prepare_teacher(teacher, runtime, compile=cfg.trainer.compile)  # fsdp: the frozen teacher sharded too
        train_data, n_val = splits.train, len(splits.val)
        source = f"teacher {sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M params"
    parallel.set_attention(student, cfg.trainer.attention)
    n_params = sum(p.numel() for p in student.parameters())
    if runtime.is_main:
        vocabs = f"vocab {vocab}" if s_tok is None else f"vocab {vocab} (teacher) / {len(s_tok)} (student)"
        console.print(f"{source} · student {n_params / 1e6:.2f}M · {vocabs} · {len(train_data)} train / "
                      f"{n_val} held-out blocks of {cfg.dataset.block_size} · {steps} steps on {runtime.device} in "
                      f"{runtime.precision.describe()}")

    sampled_cache = teacher is None and cached.val is not None and cached.val.sampled
    exact_cache = teacher is None and cached.val is not None and cached.val.exact

    def kl(gathered=contextlib.nullcontext, quiet: bool = False) -> tuple[float | None, float | None]:
        """(held-out KL, its standard error: only when estimated from a sampled cache)."""
        if teacher is None and cached.val is None:
            return None, None  # a cache without its val split: nothing to measure against
        if runtime.is_main and not quiet:  # a pass of seconds to minutes: say so, on a terminal or in a log file
            how = (" (estimated from the sampled teacher cache)" if sampled_cache else
                   " (from the exact teacher cache)" if exact_cache else
                   " (from the teacher cache: top-k + tail bucket)" if teacher is None else "")
            console.print(f"[dim]held-out KL(teacher ‖ student) over up to {cfg.eval.max_tokens or 'all'} tokens"
                          f"{how}…[/]")
        with gathered():  # fsdp, after training: the student's root parameters whole
            if vmap is not None:
                return cross_heldout(teacher, student, vmap, splits.val, runtime, cfg)["kl"], None
            if teacher is None:
                return cached_heldout_kl(student, vocab, cached.val, runtime, cfg.eval.batch_size,
                                         cfg.eval.max_tokens, cfg.loss.chunk_rows(vocab))
            return heldout_kl(teacher, student, vocab, splits.val, runtime, cfg.eval.batch_size, cfg.eval.max_tokens,
                              cfg.loss.chunk_rows(vocab)), None

    kl_before, kl_before_se = kl() if cfg.eval.before else (None, None)
    rollout = None
    if cfg.onpolicy.lmbda > 0:
        seed = cfg.onpolicy.seed if cfg.onpolicy.seed is not None else cfg.trainer.seed
        rollout = build_rollout(cfg.onpolicy, student, tokenizer, train_data, cfg.dataset.block_size, seed)
        if runtime.is_main:
            console.print(f"on-policy: the student continues {cfg.onpolicy.lmbda:g} of the sequences "
                          f"(prompts: {rollout.prompts.describe()}; up to {rollout.max_new_tokens} new tokens at "
                          f"T={cfg.onpolicy.temperature:g}, top-p {cfg.onpolicy.top_p:g})")
    unit = DistillUnit(teacher, student, vocab, cfg, runtime, steps, cache=cached.train if teacher is None else None,
                       rollout=rollout, vmap=vmap)
    def periodic_kl() -> dict[str, float]:
        value, se = kl(unit.gathered, quiet=True)
        return {} if value is None else {"heldout_kl": value, **({"heldout_kl_se": se} if se is not None else {})}

    result = train(unit, train_data, cfg.trainer, runtime, run_dir, steps, cfg.logging.progress, console,
                   tensorboard=cfg.logging.tensorboard, final_checkpoint=False, evaluate=periodic_kl,
                   eval_every=cfg.eval.every)
    # The student and the summary are written before the final checkpoint: if the disk fills up, the
    # exported student is what must survive (the last periodic checkpoint still allows a resume).
    try:
        kl_after, kl_after_se = kl(unit.gathered)
        # the exported weights, whole (fsdp: gathered from every rank, so every rank takes part)
        weights = parallel.full_model_state(unit.train_modules) if runtime.strategy == "fsdp" else None
        summary = {"method": cfg.method.name, "steps": result.steps, "train_seconds": round(result.seconds, 2),
                   "tokens": result.tokens, "kl_before": kl_before, "kl_after": kl_after,
                   **({"kl_before_se": kl_before_se, "kl_after_se": kl_after_se} if sampled_cache else {}),
                   "final": result.last_logs, "student_dir": None,
                   "teacher_cache": str(cached.root) if teacher is None else None,
                   "precision": runtime.precision.as_dict(), "host_memory": runtime.host_memory}
        if vmap is not None:
            summary["cross_tokenizer"] = {"student_vocab": len(s_tok), "shared_strings": int(vmap.t_ids.numel()),
                                          "aligned_share_train": aligned_share(train_data)}
        if runtime.is_main:
            write_outputs(cfg, run_dir, unit.student, s_tok if s_tok is not None else tokenizer, summary, weights)
    except BaseException:
        try:  # Ctrl-C or a failed write after training: keep the trained state
            result.save_checkpoint()
        except UserError as exc:
            console.print(f"[yellow]warning:[/] {exc}")
        raise
    result.save_checkpoint()
    if runtime.is_main:
        def shown(value, se) -> str:
            return "n/a" if value is None else f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else "")

        after = shown(kl_after, kl_after_se) if kl_after is not None else "n/a (the cache has no val split)"
        note = ""
        if sampled_cache:
            note = (" (estimated from the sampled teacher cache: mean ± standard error over tokens; "
                    "`egad eval run_dir=…` gives the exact value)")
        elif exact_cache:
            note = " (from the exact teacher cache: its stored final states through the teacher's head)"
        elif teacher is None:
            note = " (cached teacher: top-k + tail bucket, a lower bound of the full KL)"
        console.print(f"held-out KL(teacher ‖ student): before {shown(kl_before, kl_before_se)} → after {after} "
                      f"nats/token{note}")
        console.print(f"student saved to {summary['student_dir'] or '(export disabled)'}; run dir {run_dir}")
    return kl_after


def check_alignment(train, min_aligned: float) -> None:
    """A cross-tokenizer run whose tokenisations rarely end at the same byte has little to learn from: refuse it
    before any weights load."""
    share = aligned_share(train)
    if share < min_aligned:
        raise UserError(f"cross.min_aligned: only {share:.1%} of the student's training tokens end at the same byte "
                        f"as one of the teacher's (threshold {min_aligned:.0%}); the two tokenizers split this text "
                        f"too differently to compare their predictions. Use a student tokenizer closer to the "
                        f"teacher's (e.g. student.tokenizer=train on this corpus), or lower cross.min_aligned")


def cross_heldout(teacher, student, vmap, val, runtime: Runtime, cfg: DistillConfig) -> dict:
    """Held-out KL at the aligned positions (mapped strings + rest bucket) and bits per byte of a cross-tokenizer
    run, over the first held-out blocks worth eval.max_tokens."""
    from egad_cli.data.packing import Packed
    from egad_cli.evaluation.cross import cross_token_pass
    from egad_cli.evaluation.passes import heldout_blocks

    n = heldout_blocks(len(val), val.ids.shape[1], cfg.eval.max_tokens)
    first = Packed(val.ids[:n], val.mask[:n], {k: v[:n] for k, v in val.extra.items()})
    values, overall = cross_token_pass(teacher, student, vmap, first, runtime, cfg.eval.batch_size,
                                       cfg.loss.chunk_rows(vmap.t_vocab))
    return {"kl": float(values["kl_forward"].double().mean()), **overall}


def write_outputs(cfg: DistillConfig, run_dir: Path, student, tokenizer, summary: dict,
                  weights: dict | None = None) -> None:
    """The exported student (HF format) and summary.json; a failed write names the file and what was kept.
    weights: the full state of the TrainModules (fsdp), else the student's own parameters are saved."""
    target = run_dir / "student"
    try:
        if cfg.trainer.export:
            student.save_pretrained(target, state_dict=parallel.student_export_state(student, weights))
            tokenizer.save_pretrained(target)
            summary["student_dir"] = str(target)
        target = run_dir / "summary.json"
        target.write_text(json.dumps(summary, indent=2))
    except OSError as exc:
        raise UserError(f"could not write {target}: {exc.strerror or exc}. Training finished; the final checkpoint "
                        f"is written next if space allows, and `egad distill trainer.resume={run_dir}` re-exports "
                        f"from it once there is room (the student needs about "
                        f"{sum(p.numel() * p.element_size() for p in student.parameters()) / 2**20:.0f} MiB).") from None
