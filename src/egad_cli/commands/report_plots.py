"""egad report's pictures: what people look at when comparing the runs of a sweep.

Three figures, each one line (or point) per group of seeds (the runs that differ only in trainer.seed):

* ``report-curves.png``: the training loss, and the held-out KL (before, every ``eval.every`` steps, after),
  against tokens seen: the mean over the group's seeds, with a band from the lowest to the highest seed
  (with 3–5 seeds a ± sd band would be an estimate of an estimate; min–max shows what was run);
* ``report-metric.png``: the eval metric (the sort column) per group: the mean with its 95 % t interval;
* ``report-deciles.png``: eval forward KL by teacher-entropy decile, relative to the baseline method's
  (paired by seed where both ran the seed, else against its mean): where in the entropy range a method
  gains or loses.

The numbers behind them go to ``report-plots.json`` (tests read the figures' data from there, and so can
a user who wants to redraw them), and a compact version goes to the terminal: a sparkline of each group's
loss curve, its metric with the interval, and its per-decile change.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from egad_cli.commands.sweep import SeedGroup, run_groups, seed_groups
from egad_cli.stats import mean_interval

SPARK = "▁▂▃▄▅▆▇█"
FILES = ("report-curves.png", "report-metric.png", "report-deciles.png")


def run_curve(run_dir: Path, key: str) -> tuple[list[float], list[float]] | None:
    """(tokens seen, value) of a run: key "loss" at each logged step (metrics.jsonl); key "heldout_kl" at
    the start (summary.json's kl_before), every eval.every steps (metrics.jsonl) and the end (kl_after).
    Tokens from summary.json's tokens per step; None without a readable log or any point."""
    summary_file, log = run_dir / "summary.json", run_dir / "metrics.jsonl"
    try:
        summary = json.loads(summary_file.read_text())
        per_step = summary["tokens"] / summary["steps"]
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None
    points = [(r["step"] * per_step, float(r[key])) for r in rows
              if isinstance(r.get("step"), int) and isinstance(r.get(key), (int, float))]
    if key == "heldout_kl":
        ends = [(0.0, summary.get("kl_before")), (float(summary["tokens"]), summary.get("kl_after"))]
        points = sorted([(x, float(y)) for x, y in ends if isinstance(y, (int, float))] + points)
    if not points:
        return None
    return [p[0] for p in points], [p[1] for p in points]


def curves(groups: list[SeedGroup], key: str = "loss") -> dict[str, dict]:
    """Per group: tokens, and the mean / min / max of `key` over its seeds at the points all of them have."""
    out = {}
    for g in groups:
        per_seed = [c for c in (run_curve(run.path, key) for run in g.runs.values()) if c is not None]
        if not per_seed:
            continue
        common = sorted(set.intersection(*(set(x) for x, _ in per_seed)))
        if not common:  # seeds logged at different steps: no point to average
            continue
        at = [dict(zip(x, y)) for x, y in per_seed]
        out[g.label] = {"tokens": common, "seeds": len(per_seed),
                        "mean": [sum(s[t] for s in at) / len(at) for t in common],
                        "low": [min(s[t] for s in at) for t in common],
                        "high": [max(s[t] for s in at) for t in common]}
    return out


def metric_points(groups: list[SeedGroup]) -> dict[str, dict]:
    """Per group with the metric: its mean over seeds with the 95 % t interval."""
    out = {}
    for g in groups:
        mean, low, high = mean_interval(list(g.values.values()))
        out[g.label] = {"mean": mean, "low": low, "high": high, "seeds": len(g.values)}
    return out


def _decile_kl(run) -> list[float] | None:
    try:
        rows = json.loads((run.path / "eval.json").read_text())["by_entropy_decile"]
        return [float(r["kl_forward"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def decile_changes(groups: list[SeedGroup], baseline: str | None) -> dict[str, list[float]]:
    """Per group other than the baseline: the relative change of eval forward KL in each teacher-entropy
    bucket against the baseline group with the same other overrides, KL_g / KL_base − 1, averaged over
    the seeds both ran (against the baseline's mean over its seeds where they share none)."""
    if not baseline:
        return {}
    out = {}
    for g in groups:
        base_key = tuple((k, baseline if k == "method" else v) for k, v in g.key)
        base = next((b for b in groups if b.key == base_key), None)
        if base is None or base is g:
            continue
        mine = {s: k for s, k in ((s, _decile_kl(r)) for s, r in g.runs.items()) if k is not None}
        theirs = {s: k for s, k in ((s, _decile_kl(r)) for s, r in base.runs.items()) if k is not None}
        if not mine or not theirs:
            continue
        pairs = [(mine[s], theirs[s]) for s in mine if s in theirs]
        if not pairs:
            base_mean = [sum(col) / len(col) for col in zip(*theirs.values())]
            pairs = [(kl, base_mean) for kl in mine.values()]
        if len({len(a) for a, _ in pairs} | {len(b) for _, b in pairs}) != 1:
            continue  # evaluated with different n_buckets: not comparable
        out[g.label] = [sum(a[i] / b[i] - 1 for a, b in pairs) / len(pairs) if all(b[i] > 0 for _, b in pairs)
                        else math.nan for i in range(len(pairs[0][0]))]
    return out


def sweep_plot_data(runs, metric: str, baseline: str | None) -> dict:
    """Everything the report's pictures show, as plain numbers."""
    metric_groups = seed_groups(runs, metric)
    return {"metric": metric, "baseline": baseline,
            "curves": curves(run_groups(runs)),
            "heldout_curves": curves(run_groups(runs), "heldout_kl"),
            "metric_by_group": metric_points(metric_groups),
            "kl_forward_by_decile_vs_baseline": decile_changes(run_groups(runs), baseline)}


def sparkline(values: list[float], width: int = 24) -> str:
    """values resampled to `width` cells, drawn with eighth-height blocks (low = ▁, high = █)."""
    if not values:
        return ""
    cells = [values[min(len(values) - 1, int(i * len(values) / width))] for i in range(min(width, len(values)))]
    lo, hi = min(cells), max(cells)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))] for v in cells)


def terminal_rows(data: dict) -> tuple[list[str], list[list]]:
    """(columns, rows) of the compact table: per group the loss curve, the metric, the change by decile."""
    labels = list(dict.fromkeys([*data["curves"], *data["metric_by_group"]]))
    columns = ["group", "loss over training", f"{data['metric']} [95 % t]",
               f"Δ KL fwd by decile vs {data['baseline']} (1 → 10, %)"]
    rows = []
    for label in labels:
        curve = data["curves"].get(label)
        point = data["metric_by_group"].get(label)
        change = data["kl_forward_by_decile_vs_baseline"].get(label)
        rows.append([
            label,
            f"{sparkline(curve['mean'])} {curve['mean'][0]:.2f}→{curve['mean'][-1]:.2f}" if curve else "—",
            ("—" if point is None else f"{point['mean']:.4f}" if point["low"] is None
             else f"{point['mean']:.4f} [{point['low']:.4f}, {point['high']:.4f}]"),
            " ".join(f"{100 * c:+.0f}" for c in change) if change else "—",
        ])
    return columns, rows


def write_pngs(data: dict, out_dir: Path) -> list[Path]:
    """The three figures (those with data) into out_dir."""
    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys([*data.get("curves", {}), *data.get("heldout_curves", {}), *data["metric_by_group"],
                                 *data["kl_forward_by_decile_vs_baseline"]]))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {label: palette[i % len(palette)] for i, label in enumerate(labels)}  # one colour per group in every figure
    written = []
    panels = [(key, title) for key, title in (("curves", "training loss"), ("heldout_curves", "held-out KL"))
              if data.get(key)]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), dpi=120, squeeze=False)
        for ax, (key, title) in zip(axes[0], panels):
            for label, c in data[key].items():
                ax.plot(c["tokens"], c["mean"], marker="." if len(c["tokens"]) < 12 else None, color=color[label],
                        label=f"{label} (n={c['seeds']})")
                if c["seeds"] > 1:
                    ax.fill_between(c["tokens"], c["low"], c["high"], color=color[label], alpha=0.2)
            ax.set_xlabel("training tokens")
            ax.set_ylabel(f"{title} (mean over seeds; band: lowest to highest seed)")
            ax.legend(fontsize="small")
        written.append(_save(fig, plt, out_dir / FILES[0]))
    if data["metric_by_group"]:
        fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(data["metric_by_group"])), dpi=120)
        for y, (label, p) in enumerate(data["metric_by_group"].items()):
            err = None if p["low"] is None else [[p["mean"] - p["low"]], [p["high"] - p["mean"]]]
            ax.errorbar([p["mean"]], [y], xerr=err, fmt="o", capsize=4, color=color[label], label=label)
        ax.set_yticks(range(len(data["metric_by_group"])), list(data["metric_by_group"]))
        ax.invert_yaxis()
        ax.set_xlabel(f"{data['metric']} (mean over seeds, 95 % t interval)")
        written.append(_save(fig, plt, out_dir / FILES[1]))
    if data["kl_forward_by_decile_vs_baseline"]:
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
        for label, change in data["kl_forward_by_decile_vs_baseline"].items():
            ax.plot(range(1, len(change) + 1), [100 * c for c in change], marker="o", color=color[label], label=label)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_xlabel("teacher-entropy decile (1 = most certain tokens)")
        ax.set_ylabel(f"eval KL fwd vs method={data['baseline']} (%)")
        ax.legend(fontsize="small")
        written.append(_save(fig, plt, out_dir / FILES[2]))
    return written


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
