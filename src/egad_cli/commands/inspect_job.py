"""The work of `egad inspect-entropy` once its config is valid (imports torch and transformers)."""

from __future__ import annotations

import csv
import json
import math
import re
import time
from itertools import pairwise
from pathlib import Path

import torch
from rich.markup import escape
from rich.text import Text

from egad_cli.commands.analysis import load, preflight, show_progress, split_of
from egad_cli.commands.common import json_safe
from egad_cli.config.commands import InspectEntropyConfig
from egad_cli.data import Packed
from egad_cli.errors import UserError
from egad_cli.evaluation.entropy import (
    histogram,
    position_profile,
    printable,
    quantiles,
    thresholds,
    token_ranking,
)
from egad_cli.evaluation.passes import cached_token_pass, spread_blocks, spread_index, token_pass
from egad_cli.ui.console import console
from egad_cli.ui.histogram import bar, render_histogram
from egad_cli.ui.tables import rich_table


def analyse(m: dict[str, torch.Tensor], cfg: InspectEntropyConfig, vocab: int, block_size: int) -> dict:
    """Everything shown and saved, from the pass's per-token values."""
    H = m["entropy_teacher"]
    S = m.get("entropy_student")
    hi = None if S is None else math.ceil(max(float(H.max()), float(S.max())) * 2) / 2  # one x axis for both
    edges, counts = histogram(H, cfg.bins, hi=hi)
    out = {
        "n_tokens": int(H.numel()),
        "histogram": {"edges": edges, "teacher": counts},
        "quantiles": {"teacher": quantiles(H)},
        "thresholds": thresholds(H, vocab, cfg.difficulty, cfg.curriculum, cfg.branch),
    }
    profile_values = {"teacher": H}
    if S is not None:
        gap = S - H
        out["histogram"]["student"] = histogram(S, cfg.bins, hi=edges[-1])[1]
        out["quantiles"]["student"] = quantiles(S)
        out["quantiles"]["gap"] = quantiles(gap)
        profile_values.update(student=S, gap=gap)
    out["by_position"] = position_profile(m["position"], profile_values, cfg.position_buckets, block_size - 1)
    highest, lowest = token_ranking(H, m["target"], cfg.min_count, cfg.top_tokens)
    out["tokens"] = {"highest": highest, "lowest": lowest}
    return out


def describe_tokens(entries: list[dict], m: dict[str, torch.Tensor], data: Packed, tokenizer,
                    n_context: int) -> None:
    """Add the token's text and a context (the n_context tokens before it) to each ranking entry."""
    for e in entries:
        i = e.pop("example")
        b, p = int(m["block"][i]), int(m["position"][i])
        context = data.ids[b, max(0, p + 1 - n_context):p + 1].tolist() if n_context else []
        e.update(token=tokenizer.decode([e["token_id"]]), context=tokenizer.decode(context),
                 example_entropy=float(m["entropy_teacher"][i]))


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def token_rows(entries: list[dict]) -> list[list]:
    """Table rows: the token (spaces as ·), its mean entropy and count, and a typical context."""
    rows = []
    for e in entries:
        token = printable(e["token"])
        context = Text(re.sub(r" {3,}", "  ", printable(e["context"]))[-44:], style="dim")
        context.append(_short(token, 16), style="bold yellow")
        rows.append([Text(_short(token.replace(" ", "·"), 16)), e["mean"], e["count"], context])
    return rows


def histogram_markers(th: dict) -> dict[str, float]:
    """Thresholds in force, to mark on the histogram: the hard-token cut, hard-mode curriculum gates."""
    markers = {}
    if th["hard"]["active"] and th["hard"]["entropy_min"] is not None:
        markers["hard"] = th["hard"]["entropy_min"]
    if th["curriculum"]["active"] == "hard":
        for g in th["gates"]:
            if g["entropy_max"] is not None and g["share"] < 1:
                markers[f"s={g['s']:g}"] = g["entropy_max"]
    return markers


def print_histograms(a: dict, cfg: InspectEntropyConfig) -> None:
    scale = " · log scale" if cfg.log_scale else ""
    markers = histogram_markers(a["thresholds"])
    console.rule(f"teacher token entropy (nats) · {a['n_tokens']:,} tokens{scale}")
    console.print(render_histogram(a["histogram"]["edges"], a["histogram"]["teacher"], width=console.width,
                                   log_scale=cfg.log_scale, markers=markers))
    legend = []
    if "hard" in markers:
        legend.append(f"◂ hard: the bin of the hard-token cut (top {a['thresholds']['hard']['q']:g})")
    if any(k.startswith("s=") for k in markers):
        legend.append("◂ s=…: the bin of the curriculum gate at progress s")
    if legend:
        console.print("[dim]" + " · ".join(legend) + "[/]")
    if "student" in a["histogram"]:
        console.rule(f"student token entropy (nats){scale}")
        console.print(render_histogram(a["histogram"]["edges"], a["histogram"]["student"],
                                       width=console.width, log_scale=cfg.log_scale, style="magenta"))


def print_quantiles(a: dict) -> None:
    q = a["quantiles"]
    names = [k for k in ("teacher", "student", "gap") if k in q]
    cols = ["", *(("gap S−T" if n == "gap" else n) for n in names)]
    rows = [[stat, *(q[n][stat] for n in names)] for stat in q["teacher"]]
    console.print(rich_table(cols, rows, title="quantiles (nats)", numeric=[False] + [True] * len(names)))


def print_thresholds(th: dict) -> None:
    hard = th["hard"]
    state = "in force" if hard["active"] else f"not in force: branch={hard['branch']}"
    cut = f"H ≥ {hard['entropy_min']:.3f}" if hard["entropy_min"] is not None else "no token"
    console.print(f"[bold]hard tokens[/] (dual branch, top q={hard['q']:g} by u, {th['difficulty']} "
                  f"difficulty; {state}): {cut} · {hard['tokens']:,} tokens ({hard['share']:.1%})")
    active = {"none": "curriculum=none: no gating or re-weighting in force",
              "hard": "hard mode: the gate is in force",
              "soft": "soft mode: the weights are in force"}[th["curriculum"]["active"]]
    rows = [[Text(f"{g['s']:g}", justify="right"), g["pace"], g["gate"], g["entropy_max"],
             Text(f"{g['share']:.1%}", justify="right"), g["soft_weight_ratio"]] for g in th["gates"]]
    cols = ["s", "pace c(s)", "gate on u", "keeps H ≤", "tokens kept", "soft w(hard)/w(easy)"]
    console.print(rich_table(cols, rows, title=f"curriculum {th['curriculum']['schedule']} ({active})",
                             numeric=[True] * len(cols)))


def print_tokens(a: dict, min_count: int) -> None:
    for which in ("highest", "lowest"):
        if a["tokens"][which]:
            console.print(rich_table(["token", "mean H", "count", "typical context → token"],
                                     token_rows(a["tokens"][which]), numeric=[False, True, True, False],
                                     title=f"tokens with the {which} mean entropy (seen ≥ {min_count}×)"))


def print_positions(a: dict) -> None:
    student = "student" in a["quantiles"]
    top = max((r["teacher"] or 0.0) for r in a["by_position"]) or 1.0
    rows = []
    for r in a["by_position"]:
        lo, hi = r["positions"]
        row = [Text(f"{lo + 1}–{hi + 1}", justify="right"), r["count"], r["teacher"]]
        row += [r["student"], r["gap"]] if student else []
        rows.append([*row, Text(bar((r["teacher"] or 0.0) / top, 20), style="cyan")])
    cols = ["context", "tokens", "teacher H", *(["student H", "gap"] if student else []), ""]
    console.print(rich_table(cols, rows, numeric=[True] * (len(cols) - 1) + [False],
                             title="mean entropy by context length (tokens the model saw in its block)"))


def print_report(a: dict, cfg: InspectEntropyConfig) -> None:
    print_histograms(a, cfg)
    print_quantiles(a)
    print_thresholds(a["thresholds"])
    print_tokens(a, cfg.min_count)
    print_positions(a)


def write_csv(path: Path, m: dict[str, torch.Tensor], tokenizer) -> None:
    """One row per token: where it is, what it is, the entropies."""
    ids = m["target"].tolist()
    unique = sorted(set(ids))
    text = dict(zip(unique, tokenizer.batch_decode([[i] for i in unique])))
    columns = {"block": m["block"].tolist(), "position": m["position"].tolist(), "token_id": ids,
               "token": [text[i] for i in ids], "entropy_teacher": m["entropy_teacher"].tolist()}
    if "entropy_student" in m:
        columns["entropy_student"] = m["entropy_student"].tolist()
        columns["gap"] = (m["entropy_student"] - m["entropy_teacher"]).tolist()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in zip(*columns.values()):
            writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])


def write_png(path: Path, a: dict, cfg: InspectEntropyConfig) -> None:
    """The histogram (and the student's) with the thresholds in force as vertical lines."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # no font-cache chatter in the job log
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = a["histogram"]["edges"]
    widths = [hi - lo for lo, hi in pairwise(edges)]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for name, alpha in (("teacher", 0.75), ("student", 0.45)):
        if name in a["histogram"]:
            ax.bar(edges[:-1], a["histogram"][name], width=widths, align="edge", alpha=alpha, label=name,
                   edgecolor="white", linewidth=0.5)
    th = a["thresholds"]
    if th["hard"]["entropy_min"] is not None:
        off = "" if th["hard"]["active"] else ", not in force"
        ax.axvline(th["hard"]["entropy_min"], color="tab:red", linestyle="--",
                   label=f"hard-token cut (top {th['hard']['q']:g}){off}")
    if th["curriculum"]["active"] == "hard":
        for g, color in zip(th["gates"], ("tab:green", "tab:olive", "tab:gray")):
            if g["entropy_max"] is not None and g["share"] < 1:
                ax.axvline(g["entropy_max"], color=color, linestyle=":",
                           label=f"curriculum gate s={g['s']:g}")
    if cfg.log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("token entropy (nats)")
    ax.set_ylabel("tokens")
    ax.set_title(f"{cfg.teacher.name} on {cfg.dataset.name} ({cfg.split}), {a['n_tokens']:,} tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save(a: dict, m: dict[str, torch.Tensor], tokenizer, cfg: InspectEntropyConfig,
         out_dir: Path) -> list[Path]:
    """entropy.json (everything shown), entropy_tokens.csv (one row per token), entropy_hist.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "entropy.json", out_dir / "entropy_tokens.csv", out_dir / "entropy_hist.png"]
    paths[0].write_text(json.dumps(json_safe(a), indent=2))
    write_csv(paths[1], m, tokenizer)
    write_png(paths[2], a, cfg)
    return paths


def from_cache(cfg: InspectEntropyConfig):
    """(blocks, per-token values, tokenizer, vocabulary) read from a teacher cache: no model runs."""
    from egad_cli.teacher_cache.use import open_cached_teacher

    cached = open_cached_teacher(cfg.teacher_cache)
    if cfg.split == "all":
        raise UserError("split=all: a teacher cache holds the train and val splits; use split=train or split=val")
    reader = cached.train if cfg.split == "train" else cached.val
    if reader is None:
        raise UserError(f"split=val: the teacher cache {cached.root} was built without the val split; use "
                        f"split=train, or build it with splits='[train,val]'")
    index = spread_index(reader.n_blocks, reader.block_size, cfg.max_tokens)
    packed = reader.packed()
    data = Packed(ids=packed.ids[index], mask=packed.mask[index])
    return data, cached_token_pass(reader, index), cached.tokenizer, int(cached.manifest["vocab_size"])


def run(cfg: InspectEntropyConfig, started: float, note: str | None = None) -> float:
    torch.set_float32_matmul_precision("high")
    if note:
        console.print(f"[yellow]note:[/] {escape(note)}")
    who = f" · student={cfg.student.path or cfg.student.name}" if cfg.student is not None else ""
    console.rule(escape(f"egad inspect-entropy · teacher={cfg.teacher.name}{who} · "
                        f"dataset={cfg.dataset.name} ({cfg.split}) · method={cfg.method.name}"))
    t0 = time.perf_counter()
    if cfg.teacher_cache:
        runtime, (data, m, tokenizer, vocab) = None, from_cache(cfg)
    else:
        runtime = preflight(cfg)
        teacher, student, tokenizer, vocab = load(cfg, runtime)
        data = spread_blocks(split_of(cfg, tokenizer), cfg.max_tokens)
        t0 = time.perf_counter()
        m = token_pass(teacher, vocab, data, runtime, cfg.batch_size, cfg.chunk_size, student=student,
                       progress=show_progress(cfg.progress), console=console)
    block_size = int(data.ids.shape[1])
    where = (f"on {runtime.device} in {runtime.precision.describe()}" if runtime is not None
             else f"(read from the teacher cache {cfg.teacher_cache})")
    console.print(f"{m['target'].numel():,} tokens from {len(data)} blocks of {block_size} (spread over the "
                  f"{cfg.split} split) · vocab {vocab} · pass {time.perf_counter() - t0:.1f} s {where}")
    a = analyse(m, cfg, vocab, block_size)
    for entries in a["tokens"].values():
        describe_tokens(entries, m, data, tokenizer, cfg.context_tokens)
    print_report(a, cfg)
    if cfg.save or cfg.out_dir:
        out_dir = Path(cfg.out_dir or cfg.output_dir).expanduser()
        a["setup"] = {"teacher": cfg.teacher.name, "dataset": cfg.dataset.name, "split": cfg.split,
                      "blocks": len(data), "block_size": block_size, "vocab": vocab,
                      "method": cfg.method.name,
                      "student": (cfg.student.path or cfg.student.name) if cfg.student is not None else None,
                      "device": str(runtime.device) if runtime is not None else None,
                      "teacher_cache": cfg.teacher_cache, "seconds": round(time.perf_counter() - started, 2)}
        paths = save(a, m, tokenizer, cfg, out_dir)
        console.print(escape("wrote " + ", ".join(str(p) for p in paths)))
    return a["quantiles"]["teacher"]["mean"]
