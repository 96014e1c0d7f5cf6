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
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig
from rich.markup import escape
from rich.text import Text

from egad_cli.commands.cache_twins import cache_deviation
from egad_cli.commands.common import json_safe, run_task
from egad_cli.commands.report_plots import sweep_plot_data, terminal_rows, write_pngs
from egad_cli.commands.sweep import (
    Run,
    check_sort_column,
    differing_overrides,
    find_runs,
    higher_is_better,
    metric_columns,
    newest_sweep,
    read_run,
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
    direction = ""
    if cfg.sort_by:
        descending = higher_is_better(cfg.sort_by) if cfg.order == "auto" else cfg.order == "desc"
        direction = f" · sorted by {cfg.sort_by} {'↓' if descending else '↑'}"
    caption = ("common overrides: " + " ".join(f"{k}={v}" for k, v in common.items())) if common else None
    table_rows = [[Text(str(cell), style=STATUS_STYLE.get(cell, "")) if i == 1 else cell
                   for i, cell in enumerate(row)] for row in rows]
    title = f"{root} · {len(runs)} runs ({done} done){direction}"
    headers, numeric = [c.replace(".", "\n", 1) for c in columns], None  # 'eval.kl_forward' on two lines
    if table_width(headers, table_rows) > console.width and len(runs) <= MAX_TRANSPOSED:
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
    summary_metric = cfg.sort_by if cfg.sort_by in available else "kl_after"
    seeds = seed_summary(runs, summary_metric, cfg.baseline) if summary_metric in available else None
    if seeds is not None:
        console.print(rich_table(seeds[0], seeds[1], title=f"over seeds: {summary_metric} (mean ± sample sd)"))
    deviation = cache_deviation(runs, summary_metric) if summary_metric in available else None
    if deviation is not None:
        console.print(rich_table(*deviation, title=f"cache deviation: runs from a teacher cache against their live "
                                                   f"twins (same config, seed and data), {summary_metric}"))
        if not summary_metric.startswith("eval."):
            console.print("[dim]a cached run's kl_after is measured from its cache; `egad eval` on every run and "
                          "sort_by=eval.kl_forward compare both with the live teacher[/]")
    pictures = sweep_plot_data(runs, summary_metric, cfg.baseline)
    if pictures["curves"] or pictures["metric_by_group"]:
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
    return 0


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="report")
def main(cfg: DictConfig) -> int:
    return run_task(run_report, cfg)
