"""egad report: every run of a sweep in one table.

    egad report sweep_dir=multirun/2025-01-01/12-00-00               # sorted by kl_after
    egad report sweep_dir=multirun/… sort_by=eval.kl_forward         # after `egad eval` on each run
    egad report sweep_dir=outputs columns='[kl_after,final.loss]' export=false

When the sweep varies trainer.seed, a second table gives per group of seeds (the runs that differ
only in their seed) the mean ± sample sd of the sort metric and the paired difference to the same
group with method=<baseline> (default kd), seed by seed, with its 95 % t interval and "inconclusive"
where the interval contains zero (``egad_cli.stats``), and how many seeds a comparison with the
measured spread would need to resolve a difference of 1 % of the baseline's mean (80 % power). When runs from
a teacher cache have live twins in the sweep (the same config, seed and data without the cache), a table of
the cache's deviation per group: cache − live paired by seed (``cache_twins``). Then the pictures (``report_plots``): the
training loss against tokens, the metric per group with its interval, eval KL by teacher-entropy decile
against the baseline; compactly in the terminal, as PNGs and report-plots.json in the sweep dir.

Columns: the job, its status (done / failed / running), the overrides that differ between runs,
then metrics: summary.json's (``kl_before``, ``kl_after``, ``steps``, ``final.<name>``…) and, for
runs that `egad eval` has seen, eval.json's as ``eval.<name>``. Writes report.csv (every metric)
and report.md (the table as shown) into the sweep dir.

That is the layout of a terminal wide enough for the table (``choose_layout``; a narrower one shows a few runs
one column per job). Piped to a file or a log, or in a terminal too narrow, the report is compact, every line
within the console's width (``compact_lines``): one block per group of seeds with its finished runs, its key
metrics as mean ± sd (the sort metric, then eval.kl_forward, kl_after and final.loss, or the columns= asked
for), under the sort metric the paired difference to the baseline as in the seed table, and the change of eval
KL by entropy decile; the cache deviation as lines; a last line naming report.md and report.csv.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from egad_cli.commands.cache_twins import cache_deviation
from egad_cli.commands.common import json_safe, run_task
from egad_cli.commands.report_plots import sweep_plot_data, terminal_rows, write_pngs
from egad_cli.commands.sweep import (
    SEED_KEY,
    Run,
    baseline_group,
    check_sort_column,
    differing_overrides,
    find_runs,
    fmt_mean_sd,
    higher_is_better,
    mean_sd,
    metric_columns,
    newest_sweep,
    read_run,
    run_groups,
    seed_groups,
    seed_summary,
    sort_runs,
    to_csv,
)
from egad_cli.config import conf_dir, register_schemas, validate
from egad_cli.config.commands import ReportConfig
from egad_cli.errors import UserError
from egad_cli.ui.console import console
from egad_cli.ui.tables import markdown_table, rich_table, table_width, transpose

register_schemas()

STATUS_STYLE = {"done": "green", "failed": "red", "running": "yellow"}
MAX_TRANSPOSED = 8  #: a table too wide for the terminal is shown one column per job when there are this few
#: the compact report's metrics after the sort metric (the first MAX_KEY_METRICS the runs have), unless columns= is set
KEY_METRICS = ("eval.kl_forward", "kl_after", "final.loss")
MAX_KEY_METRICS = 3
DEFAULT_COLUMNS = ReportConfig().columns


def resolve_sweep_dir(cfg: ReportConfig) -> Path:
    if cfg.sweep_dir is None:
        found = newest_sweep(Path.cwd())
        if found is None:
            raise UserError("sweep_dir: not set and there is no ./multirun/<date>/<time>; "
                            "run `egad report sweep_dir=<a multirun dir>`")
        console.print(f"[dim]sweep_dir not set: using the newest sweep, {escape(str(found))}[/]")
        return found
    path = Path(cfg.sweep_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"sweep_dir: {str(path)!r} does not exist")
    return path


def gather(root: Path) -> list[Run]:
    runs = [read_run(p, root) for p in find_runs(root)]
    if not runs:
        raise UserError(f"sweep_dir: no egad distill runs under {str(root)!r} (a run dir holds summary.json, "
                        f"or .hydra/ from `egad distill`)")
    return runs


def build_table(runs: list[Run], shown_metrics: list[str]
                ) -> tuple[list[str], list[list], list[str], list[list]]:
    """(columns, rows) of the shown table and (columns, rows) of the full CSV."""
    differ, _ = differing_overrides(runs)
    all_metrics = metric_columns(runs)
    head = ["job", "status", *differ]

    def job(run: Run):
        return run.job if run.job is not None else run.name

    shown = [[job(r), r.status, *(r.overrides.get(k) for k in differ),
              *(r.metrics.get(m) for m in shown_metrics)] for r in runs]
    full = [[job(r), r.status, str(r.path), *(r.overrides.get(k) for k in differ),
             *(r.metrics.get(m) for m in all_metrics)] for r in runs]
    return head + shown_metrics, shown, ["job", "status", "path", *differ, *all_metrics], full


def choose_layout(out: Console, columns: list[str], headers: list[str], rows: list[list], n_runs: int) -> str:
    """'table' (every run, the shown columns) on a terminal it fits; 'transposed' (one column per job) on a
    terminal too narrow for it, with at most MAX_TRANSPOSED runs, where that fits; else 'compact': one block
    per group of seeds with its key metrics (``compact_lines``), which a log file or a narrow terminal can
    read: the full table is in report.md and report.csv."""
    if not out.is_terminal:
        return "compact"
    if table_width(headers, rows) <= out.width:
        return "table"
    if n_runs <= MAX_TRANSPOSED and table_width(*transpose(columns, rows)) <= out.width:
        return "transposed"
    return "compact"


def key_metrics(summary_metric: str, shown_metrics: list[str], available: set[str], columns: list[str]) -> list[str]:
    """The compact report's metrics: the sort (summary) metric, then eval.kl_forward, kl_after and final.loss
    (MAX_KEY_METRICS in all) where the runs have them, or with columns= set, the columns asked for."""
    if list(columns) != list(DEFAULT_COLUMNS):
        return list(dict.fromkeys(m for m in [summary_metric, *shown_metrics] if m in available))
    return list(dict.fromkeys(m for m in [summary_metric, *KEY_METRICS] if m in available))[:MAX_KEY_METRICS]


def compact_lines(runs: list[Run], metrics: list[str], summary_metric: str, baseline: str | None,
                  seeds: tuple[list[str], list[list]] | None, deciles: dict[str, list[float]],
                  sort_metric: str | None, descending: bool) -> list[Text]:
    """One block per group of seeds (``run_groups``): its label and number of finished runs, then per key metric
    the mean ± sample sd over its runs (``fmt_mean_sd``, as in the seed table), under the summary metric its
    paired difference to the baseline group where the seed table has one (the same text), and its change of
    eval KL by teacher-entropy decile against the baseline where the pictures have one. Groups in the order
    of the sort metric's mean (of their best run in the sorted runs when the sort is by an override); then
    the runs that did not finish."""
    groups = run_groups(runs)
    by_metric = {m: {g.label: g for g in seed_groups(runs, m)} for m in metrics}
    delta = {row[0]: row[3] for row in seeds[1] if row[3] != "—"} if seeds is not None and baseline else {}
    summary_groups = seed_groups(runs, summary_metric)
    reference = {g.label for g in summary_groups
                 if baseline and baseline_group(summary_groups, g, baseline) is g} if delta else set()
    if sort_metric in by_metric:
        def order(g):
            group = by_metric[sort_metric].get(g.label)
            if group is None:
                return (1, 0.0)
            mean, _ = mean_sd(list(group.values.values()))
            return (0, -mean if descending else mean) if math.isfinite(mean) else (1, 0.0)
    else:
        position = {id(run): i for i, run in enumerate(runs)}

        def order(g):
            return (0, min(position[id(r)] for r in g.runs.values()))
    groups = sorted(groups, key=order)

    delta_name, decile_name = f"  Δ vs {baseline}", "Δ KL by decile"
    names = [*metrics, *([delta_name] if delta else []),
             *([decile_name] if any(g.label in deciles for g in groups) else [])]
    width = max((len(n) for n in names), default=0)
    seeds_vary = len({r.overrides.get(SEED_KEY) for r in runs}) > 1
    lines = [Text(f"{len(groups)} group{'s' * (len(groups) != 1)} of runs"
                  + (f" that differ only in {SEED_KEY}" if seeds_vary else "")
                  + (": mean ± sample sd" if any(len(g.runs) > 1 for g in groups) else ""), style="dim")]
    if delta:
        lines.append(Text(f"Δ vs {baseline}: {summary_metric} − method={baseline}'s, paired by seed, mean [95 % t]",
                          style="dim"))
    if names[-1:] == [decile_name]:
        lines.append(Text(f"{decile_name}: eval.kl_forward vs method={baseline}'s, % per teacher-entropy decile",
                          style="dim"))
    for g in groups:
        head = Text(g.label, style="bold")
        head.append(f" · {len(g.runs)} run{'s' * (len(g.runs) != 1)}"
                    + (" · reference" if g.label in reference else ""))
        lines.append(head)
        for metric in metrics:
            group = by_metric[metric].get(g.label)
            value = "—" if group is None else fmt_mean_sd(list(group.values.values()))
            if group is not None and len(group.values) < len(g.runs):
                value += f" ({len(group.values)} of {len(g.runs)})"
            lines.append(Text(f"  {metric:<{width}}  {value}"))
            if metric == summary_metric and g.label in delta:
                lines.append(Text(f"  {delta_name:<{width}}  {delta[g.label]}"))
        if g.label in deciles:
            change = " ".join(f"{100 * c:+.0f}" for c in deciles[g.label])
            lines.append(Text(f"  {decile_name:<{width}}  {change} %"))
    for run in runs:
        if run.status != "done":
            lines.append(Text(f"{run.status}: {run.name}", style=STATUS_STYLE.get(run.status, "")))
    return lines


def compact_deviation(deviation: tuple[list[str], list[list]], metric: str) -> list[Text]:
    """The cache-deviation table (``cache_deviation``) as lines: per group of pairs, its cache, the live and
    cached means and the paired difference."""
    lines = [Text(f"cache deviation: teacher cache against live twins (same config, seed and data), {metric}, "
                  "paired by seed:",
                  style="dim")]
    for label, cache, n, live, cached, diff, relative in deviation[1]:
        lines.append(Text(f"{label} · {cache} · {n} seed{'s' * (n != 1)}", style="bold"))
        lines.append(Text(f"  live {live} · from cache {cached} · {relative}"))
        lines.append(Text(f"  cache − live  {diff}"))
    return lines


def run_report(raw: DictConfig) -> int:
    cfg: ReportConfig = validate(raw, ReportConfig)
    root = resolve_sweep_dir(cfg)
    runs = gather(root)
    check_sort_column(runs, cfg.sort_by)
    runs = sort_runs(runs, cfg.sort_by, cfg.order)
    available = set(metric_columns(runs))
    unknown = [c for c in cfg.columns if c not in available]
    shown_metrics = [c for c in cfg.columns if c in available]
    if cfg.sort_by in available and cfg.sort_by not in shown_metrics:
        shown_metrics.insert(0, cfg.sort_by)
    columns, rows, csv_columns, csv_rows = build_table(runs, shown_metrics)

    _, common = differing_overrides(runs)
    done = sum(r.status == "done" for r in runs)
    direction, descending = "", False
    if cfg.sort_by:
        descending = higher_is_better(cfg.sort_by) if cfg.order == "auto" else cfg.order == "desc"
        direction = f" · sorted by {cfg.sort_by} {'↓' if descending else '↑'}"
    caption = ("common overrides: " + " ".join(f"{k}={v}" for k, v in common.items())) if common else None
    table_rows = [[Text(str(cell), style=STATUS_STYLE.get(cell, "")) if i == 1 else cell
                   for i, cell in enumerate(row)] for row in rows]
    title = f"{root} · {len(runs)} runs ({done} done){direction}"
    headers, numeric = [c.replace(".", "\n", 1) for c in columns], None  # 'eval.kl_forward' on two lines
    layout = choose_layout(console, columns, headers, table_rows, len(runs))
    summary_metric = cfg.sort_by if cfg.sort_by in available else "kl_after"
    seeds = seed_summary(runs, summary_metric, cfg.baseline) if summary_metric in available else None
    deviation = cache_deviation(runs, summary_metric) if summary_metric in available else None
    pictures = sweep_plot_data(runs, summary_metric, cfg.baseline)

    if layout == "compact":
        facts = f"{len(runs)} runs ({done} done){direction}"
        if len(title) > console.width:  # a long sweep path on a line of its own: the facts stay whole
            console.print(Text(str(root)))
            console.print(Text(facts))
        else:
            console.print(Text(title))
        if caption:
            console.print(Text(caption))
        metrics = key_metrics(summary_metric, shown_metrics, available, cfg.columns)
        for line in compact_lines(runs, metrics, summary_metric, cfg.baseline, seeds,
                                  pictures["kl_forward_by_decile_vs_baseline"],
                                  cfg.sort_by if cfg.sort_by in available else None, descending):
            console.print(line)
    else:
        if layout == "transposed":
            headers, table_rows = transpose(columns, table_rows)  # one column per run fits a narrow terminal
            numeric = [False] + [True] * len(runs)
            title += " · one column per job"
        console.print(rich_table(headers, table_rows, caption=caption, title=title, numeric=numeric))
    if any(c.startswith("eval.") for c in unknown) and not any(c.startswith("eval.") for c in available):
        console.print("[dim]no eval metrics yet: `egad eval run_dir=<job dir>` (or "
                      "`egad eval -m run_dir=…,…`) adds the eval.* columns[/]")
    if [c for c in unknown if not c.startswith("eval.")]:
        console.print(f"[dim]columns not in any run (left out): "
                      f"{', '.join(c for c in unknown if not c.startswith('eval.'))}[/]")
    if seeds is not None and layout != "compact":
        console.print(rich_table(seeds[0], seeds[1], title=f"over seeds: {summary_metric} (mean ± sample sd)"))
    if deviation is not None:
        if layout == "compact":
            for line in compact_deviation(deviation, summary_metric):
                console.print(line)
        else:
            console.print(rich_table(*deviation, title=f"cache deviation: runs from a teacher cache against their "
                                                       f"live twins (same config, seed and data), {summary_metric}"))
        if not summary_metric.startswith("eval."):
            console.print("[dim]a cached run's kl_after is measured from its cache; `egad eval` on every run and "
                          "sort_by=eval.kl_forward compare both with the live teacher[/]")
    if (pictures["curves"] or pictures["metric_by_group"]) and layout != "compact":
        console.print(rich_table(*terminal_rows(pictures), title="in brief: one row per group of seeds"))
    if cfg.export:
        out_dir = Path(cfg.out_dir).expanduser() if cfg.out_dir else root
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.csv").write_text(to_csv(csv_columns, csv_rows))
        md = f"# egad report: {root}\n\n"
        if caption:
            md += f"{caption}\n\n"
        md += markdown_table(columns, rows)
        if seeds is not None:
            md += (f"\n\nOver seeds: {summary_metric} (mean ± sample sd; Δ paired by seed, mean [95 % t interval], "
                   f"inconclusive where it contains 0; seeds to resolve 1 % of the baseline's mean with 80 % power, "
                   f"from the measured sd of the differences)\n\n")
            md += markdown_table(*seeds)
        if deviation is not None:
            md += (f"\n\nCache deviation: {summary_metric} of each run from a teacher cache against its live twin "
                   f"(the same config, seed and data, without the cache), cache − live paired by seed, mean "
                   f"[95 % t interval]\n\n")
            md += markdown_table(*deviation)
        (out_dir / "report.md").write_text(md)
        written = [out_dir / "report.csv", out_dir / "report.md"]
        if cfg.plots:
            (out_dir / "report-plots.json").write_text(json.dumps(json_safe(pictures), indent=1) + "\n")
            written += [out_dir / "report-plots.json", *write_pngs(pictures, out_dir)]
        console.print(escape(f"wrote {', '.join(p.name for p in written)} into {out_dir}"))
    if layout == "compact":
        where = "report.md, report.csv" if cfg.export else "report.md, report.csv with export=true"
        console.print(Text(f"full table ({len(runs)} runs × {len(columns)} columns): {where}"))
    return 0


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="report")
def main(cfg: DictConfig) -> int:
    return run_task(run_report, cfg)
