"""The work of `egad eval` once its config is valid (imports torch and transformers)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.markup import escape
from rich.text import Text

from egad_cli.commands.analysis import load, preflight, show_progress, split_of
from egad_cli.commands.common import json_safe
from egad_cli.config import cache_dir
from egad_cli.config.commands import EvalCommandConfig
from egad_cli.config.schema import TrainerConfig
from egad_cli.data import Packed
from egad_cli.engine.runtime import resolve_runtime
from egad_cli.errors import UserError
from egad_cli.evaluation.cross import bits_per_byte, cross_token_pass, target_bytes
from egad_cli.evaluation.entropy import printable
from egad_cli.evaluation.generation import side_by_side
from egad_cli.evaluation.metrics import by_entropy_bucket, calibration_bins, pair_summary
from egad_cli.evaluation.onpolicy import onpolicy_metrics
from egad_cli.evaluation.passes import StoredTeacher, spread_blocks, spread_index, token_pass
from egad_cli.losses.cross_vocab import vocab_map
from egad_cli.models import check_context, preflight_student_source
from egad_cli.models.loading import load_teacher_tokenizer
from egad_cli.models.setup import load_student_for_cache, student_tokenizer_of
from egad_cli.teacher_cache.use import open_cached_teacher
from egad_cli.ui.console import console
from egad_cli.ui.progress import pass_progress
from egad_cli.ui.tables import rich_table


def summary_table(s: dict, ece_bins: int):
    cross = "aligned_share" in s  # a student with its own tokenizer: its perplexity counts other units
    rows = [("bits per byte", s["bits_per_byte_student"], s["bits_per_byte_teacher"])]
    rows += [] if cross else [("perplexity", s["ppl_student"], s["ppl_teacher"])]
    rows += [
        ("top-1 accuracy (vs label)", s["acc_student"], s.get("acc_teacher")),
        (f"ECE ({ece_bins} bins)", s["ece"], s.get("ece_teacher")),
        ("mean entropy (nats)", s["entropy_student"], s["entropy_teacher"]),
        ("KL(teacher ‖ student), forward", s["kl_forward"], None),
        ("KL(student ‖ teacher), reverse", s["kl_reverse"], None),
        ("top-1 agreement with teacher", s["top1_agreement"], None),
    ]
    title = (f"held-out metrics · {s['n_tokens']:,} aligned positions ({s['aligned_share']:.1%} of the student's "
             f"tokens; KL over shared strings + rest) · {s['bytes']:,} bytes" if cross
             else f"held-out metrics · {s['n_tokens']:,} tokens")
    return rich_table(["metric", "student", "teacher"], rows, title=title)


def bucket_table(rows: list[dict], n_buckets: int):
    name = "decile" if n_buckets == 10 else "bucket"
    cols = ["#", "H range", "tokens", "ppl S", "ppl T", "KL fwd", "KL rev", "agree", "ECE"]
    body = [[r["bucket"], Text(f"{r['entropy_lo']:.2f}–{r['entropy_hi']:.2f}", justify="right"),
             r["n_tokens"], r["ppl_student"], r["ppl_teacher"], r["kl_forward"], r["kl_reverse"],
             r["top1_agreement"], r["ece"]] for r in rows]
    return rich_table(cols, body, title=f"by teacher-entropy {name} (H in nats; 1 = most certain, "
                                        f"{n_buckets} = hardest; S = student, T = teacher)",
                      numeric=[True] * len(cols))


def onpolicy_table(s: dict, cfg: EvalCommandConfig):
    rows = [("KL(student ‖ teacher), reverse", s["onpolicy_kl_reverse"]),
            ("KL(teacher ‖ student), forward", s["onpolicy_kl_forward"]),
            ("teacher NLL of the student's tokens", s["onpolicy_nll_teacher"]),
            ("student NLL of its own tokens", s["onpolicy_nll_student"])]
    return rich_table(["metric", "per sampled token"], rows,
                      title=f"on-policy · the student continues {s['onpolicy_prompts']} held-out prompts "
                            f"(T={cfg.onpolicy.temperature:g}, top-p {cfg.onpolicy.top_p:g}; "
                            f"{s['onpolicy_tokens']:,} tokens, {s['onpolicy_mean_len']:.1f} a prompt)")


def generations_table(rows: list[dict]):
    body = [[Text(printable(r[k])) for k in ("prompt", "teacher", "student")] for r in rows]
    return rich_table(["prompt", "teacher (greedy)", "student (greedy)"], body, title="generations",
                      numeric=[False] * 3)


def run(cfg: EvalCommandConfig, run_dir: Path | None, started: float) -> float:
    torch.set_float32_matmul_precision("high")
    student_name = student_name_of(cfg)
    console.rule(escape(f"egad eval · teacher={cfg.teacher.name} · student={student_name} · "
                        f"dataset={cfg.dataset.name}"))
    if cfg.teacher_cache:
        return run_from_cache(cfg, run_dir, started)
    runtime = preflight(cfg)
    t_tok = load_teacher_tokenizer(cfg.teacher, cache_dir(cfg.cache_dir), console)
    s_tok = student_tokenizer_of(cfg, t_tok)  # None: the student shares the teacher's tokenizer
    if s_tok is not None:
        return run_cross(cfg, run_dir, started, runtime, student_name, t_tok, s_tok)
    teacher, student, tokenizer, vocab = load(cfg, runtime)
    if cfg.eval.prompts and cfg.eval.max_new_tokens > 0:  # generation: the longest prompt plus what is generated
        longest = max(len(tokenizer(p)["input_ids"]) for p in cfg.eval.prompts)
        check_context(longest + cfg.eval.max_new_tokens, "eval.max_new_tokens", teacher=teacher, student=student)
    data = spread_blocks(split_of(cfg, tokenizer), cfg.eval.max_tokens)
    console.print(f"{len(data)} {cfg.split} blocks of {data.ids.shape[1]} tokens · vocab {vocab} · "
                  f"{runtime.device} · {runtime.precision.describe()}")

    metrics = token_pass(teacher, vocab, data, runtime, cfg.eval.batch_size, cfg.chunk_size, student=student,
                         progress=show_progress(cfg.progress), console=console, description="held-out pass")
    summary, buckets = summarise(cfg, data, metrics, tokenizer)

    onpolicy = {}
    if cfg.eval.onpolicy_prompts > 0:  # the teacher grades what the student writes (evaluation.onpolicy)
        onpolicy = onpolicy_metrics(teacher, student, tokenizer, vocab, data, cfg.onpolicy, cfg.eval.onpolicy_prompts,
                                    runtime, cfg.eval.batch_size, cfg.chunk_size,
                                    progress=show_progress(cfg.progress), console=console)
        summary.update(onpolicy)

    generations = []
    if cfg.eval.prompts and cfg.eval.max_new_tokens > 0:
        bar = pass_progress("generating", len(cfg.eval.prompts), enabled=show_progress(cfg.progress),
                            console=console)
        with bar, torch.inference_mode():
            task = bar.add_task("generate", total=len(cfg.eval.prompts))
            generations = side_by_side(teacher, student, tokenizer, list(cfg.eval.prompts),
                                       cfg.eval.max_new_tokens, runtime.device,
                                       progress=lambda: bar.advance(task))

    console.print(summary_table(summary, cfg.ece_bins))
    if onpolicy:
        console.print(onpolicy_table(onpolicy, cfg))
    console.print(bucket_table(buckets, cfg.n_buckets))
    if generations:
        console.print(generations_table(generations))

    return write_result(cfg, run_dir, started, runtime, student_name, data, summary, buckets, metrics, generations)


def summarise(cfg: EvalCommandConfig, data, metrics: dict, tokenizer) -> tuple[dict, list[dict]]:
    """(the summary metrics with bits per byte of both models, the by-entropy buckets) of one held-out pass."""
    summary = pair_summary(metrics, cfg.ece_bins)
    n_bytes = int(target_bytes(data, metrics, tokenizer).sum())  # the held-out text's own bytes
    for side in ("student", "teacher"):
        summary[f"bits_per_byte_{side}"] = bits_per_byte(float(metrics[f"nll_{side}"].double().sum()), n_bytes)
    return summary, by_entropy_bucket(metrics, cfg.n_buckets, cfg.ece_bins)


def run_from_cache(cfg: EvalCommandConfig, run_dir: Path | None, started: float) -> float:
    """``run`` with the teacher read from an exact teacher cache (teacher_cache=DIR; ``evaluation.passes.
    StoredTeacher``): its stored final states through its head are the teacher's distribution on the cache's
    held-out blocks, so the student's pass is the only model pass. The teacher and dataset are the cache's (the
    config stage checked that a run_dir's agree). Generations and the on-policy metric feed new tokens to the
    teacher, which a cache cannot: they are left out, and said so. Bits per byte count what each target id
    spells (the cache stores ids, not the text's offsets)."""
    runtime = resolve_runtime(TrainerConfig(device=cfg.device, precision=cfg.precision), device_key="device",
                              measures=True)
    preflight_student_source(cfg.student)
    cached = open_cached_teacher(cfg.teacher_cache)
    reader = cached.val if cfg.split == "val" else cached.train
    if reader is None:
        raise UserError(f"split=val: the teacher cache {cached.root} was built without the val split; use "
                        f"split=train, drop teacher_cache, or build the cache with splits='[train,val]'")
    index = spread_index(reader.n_blocks, reader.block_size, cfg.eval.max_tokens)
    teacher = StoredTeacher(reader, index)  # refuses a compact cache (before the student loads)
    student, _, vocab = load_student_for_cache(cfg, cached, runtime)
    tokenizer = cached.tokenizer
    packed = reader.packed()
    data = Packed(ids=packed.ids[index], mask=packed.mask[index])
    console.print(f"{len(data)} {cfg.split} blocks of {data.ids.shape[1]} tokens · vocab {vocab} · teacher read "
                  f"from the exact cache {escape(str(cached.root))} · {runtime.device} · "
                  f"{runtime.precision.describe()}")
    metrics = token_pass(teacher, vocab, data, runtime, cfg.eval.batch_size, cfg.chunk_size,
                         student=student, progress=show_progress(cfg.progress), console=console,
                         description="held-out pass")
    summary, buckets = summarise(cfg, data, metrics, tokenizer)
    console.print(summary_table(summary, cfg.ece_bins))
    console.print(bucket_table(buckets, cfg.n_buckets))
    if cfg.eval.onpolicy_prompts > 0 or (cfg.eval.prompts and cfg.eval.max_new_tokens > 0):
        console.print("[dim]teacher_cache: generations and the on-policy metric feed new tokens to the teacher, "
                      "which a cache cannot: not run (drop teacher_cache to run them)[/]")
    return write_result(cfg, run_dir, started, runtime, student_name_of(cfg), data, summary, buckets, metrics, [],
                        teacher_cache=str(cached.root))


def student_name_of(cfg: EvalCommandConfig) -> str:
    return cfg.student.path if cfg.student.init == "hf" else cfg.student.name


def run_cross(cfg: EvalCommandConfig, run_dir: Path | None, started: float, runtime, student_name: str, t_tok,
              s_tok) -> float:
    """``run`` for a student with its own tokenizer: the metrics of ``evaluation.cross`` (bits per byte of the
    same text, the aligned positions' KL and agreement, by teacher-entropy decile). Generations and the on-policy
    metric, which feed one model's tokens to the other, are left out (said on the console)."""
    teacher, student, _, vocab = load(cfg, runtime, s_tok=s_tok)
    vmap = vocab_map(t_tok, s_tok, vocab, len(s_tok))
    data = spread_blocks(split_of(cfg, t_tok, s_tok), cfg.eval.max_tokens)
    console.print(f"{len(data)} {cfg.split} blocks of {data.ids.shape[1]} tokens · cross-tokenizer: student vocab "
                  f"{len(s_tok)}, teacher vocab {vocab}, {vmap.t_ids.numel()} shared token strings · "
                  f"{runtime.device} · {runtime.precision.describe()}")
    metrics, overall = cross_token_pass(teacher, student, vmap, data, runtime, cfg.eval.batch_size,
                                        cfg.chunk_size)
    summary = {**pair_summary(metrics, cfg.ece_bins), **overall, "shared_strings": int(vmap.t_ids.numel())}
    buckets = by_entropy_bucket(metrics, cfg.n_buckets, cfg.ece_bins)
    console.print(summary_table(summary, cfg.ece_bins))
    console.print(bucket_table(buckets, cfg.n_buckets))
    console.print("[dim]cross-tokenizer: generations and the on-policy metric are not run (each would feed one "
                  "model's tokens to the other)[/]")
    return write_result(cfg, run_dir, started, runtime, student_name, data, summary, buckets, metrics, [])


def write_result(cfg: EvalCommandConfig, run_dir: Path | None, started: float, runtime, student_name: str, data,
                 summary: dict, buckets: list[dict], metrics: dict, generations: list[dict],
                 teacher_cache: str | None = None) -> float:
    """eval.json (the summary, the deciles, the calibration bins, the generations, the setup); returns the KL."""
    out_dir = Path(cfg.out_dir or run_dir or cfg.output_dir).expanduser()
    result = {
        **summary,
        "kl_forward_top_decile": buckets[-1]["kl_forward"],
        "by_entropy_decile": buckets,
        "calibration": calibration_bins(metrics["confidence"], metrics["correct"], cfg.ece_bins),
        "generations": generations,
        "setup": {"run_dir": str(run_dir) if run_dir else None, "teacher": cfg.teacher.name,
                  "teacher_path": cfg.teacher.path, "teacher_cache": teacher_cache, "student": student_name,
                  "dataset": cfg.dataset.name,
                  "split": cfg.split, "blocks": len(data), "block_size": int(data.ids.shape[1]),
                  "max_tokens": cfg.eval.max_tokens, "ece_bins": cfg.ece_bins, "n_buckets": cfg.n_buckets,
                  "device": str(runtime.device), "precision": runtime.precision.as_dict(),
                  "seconds": round(time.perf_counter() - started, 2)},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(json_safe(result), indent=2))
    console.print(escape(f"wrote {out_dir / 'eval.json'}"))
    return summary["kl_forward"]
