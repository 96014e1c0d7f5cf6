"""Gathering the runs of a sweep: find run dirs, read their overrides and metrics, sort, export.

A run dir is a directory with ``summary.json``, or a Hydra job dir of ``egad distill``
(``.hydra/hydra.yaml`` with ``job.config_name: distill``), so a job that failed before writing
its summary is still listed, with its status.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from egad_cli.errors import UserError
from egad_cli.stats import PairedDiff, paired_difference, seeds_needed

JOB_ERROR = "error.txt"  #: written by a sweep job that ended in a user error (its message)
SKIP_DIRS = {"checkpoints", "student", ".hydra", "tb", "tensorboard", "__pycache__"}
RUNNING_WINDOW_S = 120  #: a run without summary.json whose files changed this recently is reported as running
HIGHER_IS_BETTER = ("agreement", "acc", "tokens_per_s", "accuracy")


@dataclass
class Run:
    path: Path
    name: str  #: path relative to the sweep dir
    job: int | None  #: Hydra's job number in the sweep
    status: str  #: done | failed | running
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def value(self, column: str) -> Any:
        if column in self.metrics:
            return self.metrics[column]
        return self.overrides.get(column)


#: overrides that say how a run was started, not what it is
NOT_A_SETTING = ("trainer.resume",)


def _hydra_job(path: Path) -> tuple[str | None, int | None]:
    """(config name, job number) from .hydra/hydra.yaml, or (None, None)."""
    file = path / ".hydra" / "hydra.yaml"
    if not file.is_file():
        return None, None
    try:
        job = OmegaConf.load(file).hydra.job
        num = OmegaConf.select(job, "num", throw_on_missing=False)
        return job.get("config_name"), (int(num) if isinstance(num, int) else None)
    except (OSError, OmegaConfBaseException, AttributeError):  # unreadable: only the job number is lost
        return None, None


def is_run_dir(path: Path) -> bool:
    return (path / "summary.json").is_file() or _hydra_job(path)[0] == "distill"


def find_runs(root: Path) -> list[Path]:
    """Every run dir under root (root itself included), not descending into a run dir. Symlinked dirs are
    followed (a report over runs gathered from several sweeps by links), each real dir once."""
    found, seen = [], set()
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = here.resolve()
        if real in seen:  # a link back up, or two links to one dir
            dirnames[:] = []
            continue
        seen.add(real)
        if is_run_dir(here):
            found.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
    return found


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """['method=kd', '+x.y=1'] -> {'method': 'kd', 'x.y': '1'} (deletions are kept as '~')."""
    out = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        if key.startswith("~"):
            out[key[1:]] = "~"
        else:
            out[key.lstrip("+")] = value
    return out


def _flatten(prefix: str, data: dict) -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(name + ".", value))
        elif (isinstance(value, (int, float)) and not isinstance(value, bool)) or value is None:
            out[name] = value
    return out


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _last_step(path: Path) -> int | None:
    try:
        lines = [ln for ln in (path / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        return int(json.loads(lines[-1])["step"]) if lines else None
    except (OSError, json.JSONDecodeError, KeyError, ValueError):
        return None


def _latest_mtime(path: Path) -> float:
    times = [p.stat().st_mtime for p in path.rglob("*") if p.is_file()]
    return max(times, default=path.stat().st_mtime)


def read_run(path: Path, root: Path) -> Run:
    """One run: status, overrides (from .hydra/overrides.yaml) and flattened metrics.

    Metrics: summary.json's numbers (``kl_before``, ``kl_after``, ``steps``, …, ``final.<name>``)
    and, when `egad eval` has been run on it, eval.json's numbers as ``eval.<name>``. Text fields
    (the method name) are left out: what differs between runs is in the override columns.
    """
    _, job = _hydra_job(path)
    name = str(path.relative_to(root)) if path != root else path.name
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = parse_overrides(list(OmegaConf.load(overrides_file))) if overrides_file.is_file() else {}
    for key in NOT_A_SETTING:  # a resumed run is the same run: it must not form a group of its own
        overrides.pop(key, None)
    summary = _read_json(path / "summary.json")
    metrics: dict[str, Any] = {}
    if summary is not None:
        status = "done"
        metrics.update(_flatten("", {k: v for k, v in summary.items() if k != "student_dir"}))
    else:
        recent = time.time() - _latest_mtime(path) < RUNNING_WINDOW_S
        status = "failed" if (path / JOB_ERROR).is_file() or not recent else "running"
        metrics["steps"] = _last_step(path)
    evaluation = _read_json(path / "eval.json")
    if evaluation is not None:
        metrics.update({f"eval.{k}": v for k, v in evaluation.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return Run(path=path, name=name, job=job, status=status, overrides=overrides, metrics=metrics)


def differing_overrides(runs: list[Run]) -> tuple[list[str], dict[str, str]]:
    """(keys whose value differs between runs, in first-seen order; {key: value} shared by all runs)."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys]
    differ = [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]
    common = {k: runs[0].overrides[k] for k in keys if k not in differ}
    return differ, common


def metric_columns(runs: list[Run]) -> list[str]:
    """Every metric any run has, in first-seen order."""
    out: list[str] = []
    for run in runs:
        out += [k for k in run.metrics if k not in out]
    return out


def higher_is_better(column: str) -> bool:
    return any(word in column for word in HIGHER_IS_BETTER)


def sort_runs(runs: list[Run], column: str | None, order: str = "auto") -> list[Run]:
    """Runs sorted by a metric or override column; runs without a value go last. None: job order."""
    by_job = sorted(runs, key=lambda r: (r.job is None, r.job if r.job is not None else 0, r.name))
    if column is None:
        return by_job
    descending = higher_is_better(column) if order == "auto" else order == "desc"

    def key(run: Run):
        value = run.value(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return (2, 0.0, "")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (0, -value if descending else value, "")
        try:
            number = float(value)
            return (0, -number if descending else number, "")
        except (TypeError, ValueError):
            return (1, 0.0, str(value))

    present = sorted([r for r in by_job if key(r)[0] < 2], key=key)
    if descending:
        text = [r for r in present if key(r)[0] == 1][::-1]
        present = [r for r in present if key(r)[0] == 0] + text
    return present + [r for r in by_job if key(r)[0] == 2]


def available_columns(runs: list[Run]) -> list[str]:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys]
    return metric_columns(runs) + keys


def check_sort_column(runs: list[Run], column: str | None) -> None:
    if column is None:
        return
    available = available_columns(runs)
    if column not in available:
        raise UserError(f"sort_by: {column!r} is not a column of this sweep; valid choices: "
                        f"{', '.join(available)}")


def to_csv(columns: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue()


def newest_sweep(cwd: Path) -> Path | None:
    """The most recent multirun/<date>/<time> directory under cwd."""
    sweeps = [p for p in cwd.glob("multirun/*/*") if p.is_dir()]
    return max(sweeps, key=lambda p: (p.parent.name, p.name), default=None)


SEED_KEY = "trainer.seed"


@dataclass
class SeedGroup:
    """The runs of a sweep that differ only in trainer.seed."""

    label: str  #: the group's other overrides, as key=value (``group_label``: the unset ones left out)
    key: tuple  #: the group's other overrides, as sorted (key, value) pairs
    values: dict[str, float]  #: seed -> metric
    runs: dict[str, Run] = field(default_factory=dict)  #: seed -> the finished run


def group_label(key: tuple) -> str:
    """A group's overrides as key=value, without the keys its runs leave unset: in a sweep mixing runs from a
    teacher cache with live ones, the cached runs have no dataset override and the live ones no teacher_cache,
    and neither label should say ``=None``. Two groups still get two labels: a key they set differently is
    shown in at least one of them."""
    return " ".join(f"{k}={v}" for k, v in key if v is not None) or "(all runs)"


def run_groups(runs: list[Run]) -> list[SeedGroup]:
    """Finished runs grouped by every differing override except the seed (in first-seen order), without
    values (``seed_groups`` reads a metric into them)."""
    differ, _ = differing_overrides(runs)
    others = [k for k in differ if k != SEED_KEY]
    groups: dict[tuple, SeedGroup] = {}
    for run in sorted(runs, key=lambda r: (r.job is None, r.job or 0, r.name)):
        if run.status != "done":
            continue
        key = tuple((k, run.overrides.get(k)) for k in others)
        label = group_label(key)
        group = groups.setdefault(key, SeedGroup(label, key, {}))
        seed, n = str(run.overrides.get(SEED_KEY)), 1
        while (seed if n == 1 else f"{seed}#{n}") in group.runs:  # the same seed twice (runs linked in from two
            n += 1                                                 # sweeps): both kept; pairs use the first
        group.runs[seed if n == 1 else f"{seed}#{n}"] = run
    return list(groups.values())


def seed_groups(runs: list[Run], metric: str) -> list[SeedGroup]:
    """Finished runs that have `metric`, grouped by every differing override except the seed."""
    out = []
    for group in run_groups(runs):
        for seed, run in group.runs.items():
            value = run.metrics.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                group.values[seed] = float(value)
        if group.values:
            group.runs = {seed: group.runs[seed] for seed in group.values}
            out.append(group)
    return out


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def fmt_mean_sd(values: list[float], digits: int = 4) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def seed_summary(runs: list[Run], metric: str, baseline: str | None) -> tuple[list[str], list[list]] | None:
    """Per group of seeds: n, mean ± sd of `metric`, and the paired difference to the baseline group
    (the group with method=<baseline> and the same other overrides), seed by seed, over the seeds both
    ran: its mean with a 95 % t interval and a verdict, "inconclusive" where the interval holds zero
    (``egad_cli.stats``). None when the sweep does not vary trainer.seed."""
    differ, _ = differing_overrides(runs)
    if SEED_KEY not in differ:
        return None
    groups = seed_groups(runs, metric)
    columns = ["group", "seeds", f"{metric} mean ± sd"]
    if baseline:
        columns += [f"Δ vs method={baseline} (paired, 95 % t interval)",
                    f"seeds to resolve {RESOLVE_SHARE * 100:g} % (80 % power)"]
    rows = []
    for g in groups:
        row: list = [g.label, len(g.values), fmt_mean_sd(list(g.values.values()))]
        if baseline:
            base = baseline_group(groups, g, baseline)
            diff = None if base is None or base is g else paired_difference(g.values, base.values)
            row += ["—", "—"] if diff is None else [diff.text(), seeds_to_resolve(diff, base)]
        rows.append(row)
    return columns, rows


#: the difference, as a share of the baseline's mean, that the seed table says how many seeds would resolve
RESOLVE_SHARE = 0.01


def seeds_to_resolve(diff: PairedDiff, base: SeedGroup) -> str:
    """Seeds a paired comparison with this spread (the measured sd of the differences) needs for its 95 %
    interval to exclude zero, with 80 % power, when the true difference is RESOLVE_SHARE of the baseline's
    mean (``egad_cli.stats.seeds_needed``): '—' with one seed (no spread to go on)."""
    base_mean, _ = mean_sd(list(base.values.values()))
    if diff.sd is None or not math.isfinite(diff.sd) or not math.isfinite(base_mean) or base_mean == 0:
        return "—"
    n = seeds_needed(diff.sd, RESOLVE_SHARE * abs(base_mean))
    return "> 100000" if n is None else str(n)


def baseline_group(groups: list[SeedGroup], group: SeedGroup, baseline: str) -> SeedGroup | None:
    """The group with method=<baseline> and `group`'s other overrides (None if the sweep has none)."""
    base_key = tuple((k, baseline if k == "method" else v) for k, v in group.key)
    return next((b for b in groups if b.key == base_key), None)
