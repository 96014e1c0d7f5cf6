"""`egad report` over a real two-job multirun directory (made with `egad distill -m` through argv)."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import sys
import time

import pytest
from conftest import egad, text_dataset_args


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, corpus_dir):
    """`egad distill -m debug=smoke method=kd,egad` on the tiny corpus: two job dirs under one sweep dir."""
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", list(sys.argv))
        mp.setenv("HF_HUB_OFFLINE", "1")
        code = egad("distill", "-m", "debug=smoke", "method=kd,egad", *text_dataset_args(corpus_dir),
                    "trainer.max_steps=2", "eval.before=false", f"hydra.sweep.dir={root / 'sweep'}",
                    f"cache_dir={root / 'cache'}")
    assert code == 0
    return root / "sweep"


def read_csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_one_table_with_the_differing_overrides(sweep, capsys):
    assert egad("report", f"sweep_dir={sweep}") == 0
    out = capsys.readouterr().out
    assert "2 runs (2 done)" in out and "sorted by kl_after ↑" in out
    rows = read_csv(sweep / "report.csv")
    assert [r["method"] for r in sorted(rows, key=lambda r: r["job"])] == ["kd", "egad"]
    assert all(r["status"] == "done" for r in rows)
    kl = [float(r["kl_after"]) for r in rows]
    assert kl == sorted(kl)                                       # sorted by kl_after, ascending
    assert "debug" not in rows[0] and "dataset=text" not in rows[0]   # shared overrides are not columns
    md = (sweep / "report.md").read_text()
    assert "| job | status | method |" in md and "common overrides:" in md and "debug=smoke" in md
    assert len([line for line in md.splitlines() if line.startswith("| ") and "done" in line]) == 2


def test_sort_order_columns_and_eval_metrics(sweep, tmp_path, capsys):
    job0 = next(p for p in sweep.iterdir() if p.name.startswith("0_"))
    assert egad("eval", f"run_dir={sweep}/0_*", f"hydra.run.dir={tmp_path / 'eval'}", "progress=false",
                "eval.max_new_tokens=0") == 0
    capsys.readouterr()
    assert egad("report", f"sweep_dir={sweep}", "sort_by=final.loss", "order=desc", f"out_dir={tmp_path}",
                "columns=[final.loss,eval.kl_forward]") == 0
    rows = read_csv(tmp_path / "report.csv")
    losses = [float(r["final.loss"]) for r in rows]
    assert losses == sorted(losses, reverse=True)
    by_method = {r["method"]: r for r in rows}
    assert by_method["kd"]["eval.kl_forward"] != "" and by_method["egad"]["eval.kl_forward"] == ""
    md = (tmp_path / "report.md").read_text()
    assert "final.loss" in md and "eval.kl_forward" in md and "kl_before" not in md
    (job0 / "eval.json").unlink()


def test_failed_runs_are_listed_with_their_status(sweep, tmp_path, capsys):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("report.*"))
    failed = next(p for p in copy.iterdir() if p.name.startswith("1_"))
    (failed / "summary.json").unlink()
    old = time.time() - 3600
    for path in failed.rglob("*"):
        os.utime(path, (old, old))                  # untouched for an hour: failed, not still running
    assert egad("report", f"sweep_dir={copy}", "export=false", "sort_by=null") == 0
    out = capsys.readouterr().out
    assert "2 runs (1 done)" in out and "failed" in out
    assert not (copy / "report.csv").exists()
    (failed / "metrics.jsonl").touch()              # written a moment ago: still running
    assert egad("report", f"sweep_dir={copy}", "export=false") == 0
    assert "running" in capsys.readouterr().out


def test_clear_errors(sweep, tmp_path, capsys):
    assert egad("report", f"sweep_dir={sweep}", "sort_by=nope") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "sort_by: 'nope'" in err and "kl_after" in err and "method" in err
    assert egad("report", f"sweep_dir={tmp_path}") == 2
    assert "no egad distill runs" in " ".join(capsys.readouterr().err.split())
    assert egad("report", f"sweep_dir={tmp_path / 'missing'}") == 2
    assert egad("report", "order=sideways", f"sweep_dir={sweep}") == 2


def test_one_bad_sweep_point_does_not_stop_the_sweep(tmp_path, capsys):
    """-m trainer.lr=1e-3,-1,2e-3: the bad job is recorded as failed, the others run, egad exits 2."""
    from conftest import egad

    sweep = tmp_path / "sweep"
    code = egad("distill", "-m", "debug=smoke", "method=kd", "eval.before=false", "trainer.lr=1e-3,-1,2e-3",
                f"hydra.sweep.dir={sweep}")
    err = capsys.readouterr().err
    assert code == 2 and "1 job(s) of the sweep failed" in err and "trainer.lr" in err
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 3
    assert (sweep / jobs[0] / "summary.json").is_file() and (sweep / jobs[2] / "summary.json").is_file()
    assert "trainer.lr" in (sweep / jobs[1] / "error.txt").read_text()
    assert egad("report", f"sweep_dir={sweep}") == 0
    assert "failed" in capsys.readouterr().out


def test_seed_summary_gives_mean_sd_and_paired_differences_to_the_baseline(tmp_path, capsys):
    import statistics
    from pathlib import Path

    from egad_cli.commands.sweep import Run, seed_summary
    from egad_cli.stats import seeds_needed

    values = {("kd", "0"): 1.0, ("kd", "1"): 2.0, ("kd", "2"): 3.5, ("egad", "0"): 0.5, ("egad", "1"): 1.7,
              ("egad", "2"): 2.0, ("eakd", "0"): 9.0}
    runs = [Run(Path(f"/sweep/{i}"), str(i), i, "done", {"method": m, "trainer.seed": s}, {"kl_after": v})
            for i, ((m, s), v) in enumerate(values.items())]
    runs.append(Run(Path("/sweep/9"), "9", 9, "failed", {"method": "eakd", "trainer.seed": "1"}, {}))
    columns, rows = seed_summary(runs, "kl_after", "kd")
    assert columns[0] == "group" and "paired" in columns[3]
    by_group = {row[0]: row for row in rows}
    kd = [1.0, 2.0, 3.5]
    assert by_group["method=kd"][1:] == [3, f"{statistics.mean(kd):.4f} ± {statistics.stdev(kd):.4f}", "—", "—"]
    diffs = [0.5 - 1.0, 1.7 - 2.0, 2.0 - 3.5]
    mean, half = statistics.mean(diffs), 4.302652729911275 * statistics.stdev(diffs) / 3 ** 0.5  # t_{.975, 2}
    assert by_group["method=egad"][3] == f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] (n=3) inconclusive"
    # seeds to resolve 1 % of kd's mean (0.02167) with the differences' sd (0.6429): ratio 29.7, n ≈ 7.85 · 29.7² + 2
    assert "1 %" in columns[4] and by_group["method=egad"][4] == str(seeds_needed(statistics.stdev(diffs),
                                                                                   0.01 * statistics.mean(kd)))
    assert 6900 <= int(by_group["method=egad"][4]) <= 6940
    assert by_group["method=eakd"][1:] == [1, "9.0000", "+8.0000 (n=1) inconclusive", "—"]  # failed run left out
    assert seed_summary([r for r in runs if r.overrides["trainer.seed"] == "0"], "kl_after", "kd") is None


def hand_made_sweep(root, values, deciles):
    """Run dirs as `egad distill -m` and `egad eval` leave them, with chosen numbers: values[(method, seed)] is
    the eval KL, deciles[(method, seed)] its per-decile KL; the loss curve of each run is 10 − step/10 + seed,
    its held-out KL value + 2 at step 20 (eval.every) and value + 1 at the end (kl_after)."""
    import json

    for i, ((method, seed), value) in enumerate(values.items()):
        run = root / f"{i}_method:{method}__trainer.seed:{seed}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- method={method}\n- trainer.seed={seed}\n")
        (run / "summary.json").write_text(json.dumps({"method": method, "steps": 30, "tokens": 3000,
                                                      "kl_after": value + 1}))
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 10 - s / 10 + int(seed)}) + "\n"
                                                   for s in (10, 20, 30))
                                           + json.dumps({"step": 20, "heldout_kl": value + 2}) + "\n")
        (run / "eval.json").write_text(json.dumps({"kl_forward": value, "by_entropy_decile": [
            {"bucket": b + 1, "kl_forward": kl} for b, kl in enumerate(deciles[(method, seed)])]}))


def test_report_pictures_hold_one_series_per_group_with_the_hand_computed_numbers(tmp_path, report_out):
    import json
    import statistics

    values = {("kd", "0"): 3.0, ("kd", "1"): 3.4, ("kd", "2"): 3.2,
              ("egad", "0"): 2.9, ("egad", "1"): 3.3, ("egad", "2"): 3.15}
    deciles = {(m, s): [1.0 + 0.1 * int(s), 2.0] if m == "kd" else [1.1 + 0.1 * int(s), 1.5]
               for m, s in values}
    sweep = tmp_path / "sweep"
    hand_made_sweep(sweep, values, deciles)
    out = "\n".join(report_out(sweep, "sort_by=eval.kl_forward", width=200, terminal=True))
    assert "in brief" in out and "method=egad" in out.split("in brief")[1]
    data = json.loads((sweep / "report-plots.json").read_text())
    assert set(data["curves"]) == {"method=kd", "method=egad"}  # one line per group
    kd = data["curves"]["method=kd"]
    assert kd["tokens"] == [1000.0, 2000.0, 3000.0] and kd["seeds"] == 3
    assert kd["mean"] == pytest.approx([10.0, 9.0, 8.0]) and kd["low"] == [9.0, 8.0, 7.0] and kd["high"] == [11, 10, 9]
    held = data["heldout_curves"]["method=kd"]
    assert held["tokens"] == [2000.0, 3000.0] and held["mean"] == pytest.approx([5.2, 4.2])
    egad_point = data["metric_by_group"]["method=egad"]
    mine = [2.9, 3.3, 3.15]
    half = 4.302652729911275 * statistics.stdev(mine) / 3 ** 0.5
    assert egad_point["mean"] == pytest.approx(statistics.mean(mine))
    assert (egad_point["low"], egad_point["high"]) == pytest.approx((statistics.mean(mine) - half,
                                                                     statistics.mean(mine) + half))
    change = data["kl_forward_by_decile_vs_baseline"]
    assert list(change) == ["method=egad"]  # the baseline has no line against itself
    want_first = statistics.mean((1.1 + 0.1 * s) / (1.0 + 0.1 * s) - 1 for s in range(3))
    assert change["method=egad"] == pytest.approx([want_first, -0.25])
    for name in ("report-curves.png", "report-metric.png", "report-deciles.png"):
        assert (sweep / name).stat().st_size > 1000
    # the paired difference egad − kd: −0.1, −0.1, −0.05 → an interval below zero
    md = (sweep / "report.md").read_text()
    assert "(n=3) lower" in md


def test_report_without_export_writes_no_pictures(tmp_path):
    values = {("kd", "0"): 3.0, ("egad", "0"): 2.9}
    sweep = tmp_path / "sweep"
    hand_made_sweep(sweep, values, {k: [1.0, 2.0] for k in values})
    assert egad("report", f"sweep_dir={sweep}", "export=false") == 0
    assert not list(sweep.glob("report*"))


def test_report_follows_links_to_runs_of_other_sweeps_once(tmp_path):
    """Runs gathered from several sweeps by symlinks are reported; a link cycle or a second link to the
    same run does not repeat it."""
    import json

    hand_made_sweep(tmp_path / "a", {("kd", "0"): 3.0}, {("kd", "0"): [1.0]})
    hand_made_sweep(tmp_path / "b", {("egad", "0"): 2.9}, {("egad", "0"): [1.0]})
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "kd").symlink_to(next((tmp_path / "a").iterdir()))
    (merged / "egad").symlink_to(next((tmp_path / "b").iterdir()))
    (merged / "egad-again").symlink_to(next((tmp_path / "b").iterdir()))
    (merged / "loop").symlink_to(merged)
    assert egad("report", f"sweep_dir={merged}") == 0
    data = json.loads((merged / "report-plots.json").read_text())
    assert sorted(data["curves"]) == ["method=egad", "method=kd"]
    assert all(c["seeds"] == 1 for c in data["curves"].values())


def test_a_resumed_run_stays_in_its_group(tmp_path):
    """trainer.resume says how a run was started, not what it is: a resumed seed is still one of its group's."""
    from egad_cli.commands.sweep import find_runs, read_run, seed_summary

    values = {("kd", "0"): 3.0, ("kd", "1"): 3.4, ("egad", "0"): 2.9, ("egad", "1"): 3.3}
    hand_made_sweep(tmp_path, values, {key: [1.0, 2.0] for key in values})
    resumed = next(p for p in tmp_path.iterdir() if p.name.endswith("method:egad__trainer.seed:1"))
    overrides = resumed / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + f"- trainer.resume={resumed}\n")
    runs = [read_run(p, tmp_path) for p in find_runs(tmp_path)]
    _, rows = seed_summary(runs, "eval.kl_forward", "kd")
    assert [row[:2] for row in rows] == [["method=kd", 2], ["method=egad", 2]]


# The layouts: today's table on a terminal wide enough for it, a compact one (groups and key metrics) in a log
# or a narrow terminal. A rich Console stands in for stdout: force_terminal says which it is.

EVAL_KEYS = ("bits_per_byte_student", "ppl_student", "kl_reverse", "top1_agreement", "ece", "kl_forward_top_decile")


def full_sweep(root, methods=("kd", "egad", "egad_no_temperature"), seeds=4):
    """hand_made_sweep with every default column of the report: 12 runs (3 methods × 4 seeds), numbers that
    differ from run to run, so that the full table is as wide as a real one."""
    import json

    values = {(m, str(s)): 3.0 + 0.1 * i + 0.013 * s * (i + 1) for i, m in enumerate(methods) for s in range(seeds)}
    hand_made_sweep(root, values, {k: [1.0 + v / 10, 2.0 + v / 10] for k, v in values.items()})
    for run in root.iterdir():
        summary, evaluation = json.loads((run / "summary.json").read_text()), json.loads((run / "eval.json").read_text())
        value = evaluation["kl_forward"]
        summary.update(kl_before=value + 1.5, final={"loss": value / 2 + 0.001 * len(run.name)})
        evaluation.update({k: value * (i + 2) / 7 for i, k in enumerate(EVAL_KEYS)})
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "eval.json").write_text(json.dumps(evaluation))
        job = run.name.split("_")[0]  # as Hydra leaves it: the job column is its number
        (run / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  job:\n    name: distill\n    config_name: distill\n"
                                                   f"    num: {job}\n")
    return values


@pytest.fixture
def report_out(monkeypatch):
    """report_out(sweep_dir, *overrides, width=80, terminal=False) -> the lines `egad report` printed."""
    from rich.console import Console

    from egad_cli.commands import report

    def run(sweep_dir, *overrides, width=80, terminal=False):
        out = Console(width=width, file=io.StringIO(), force_terminal=terminal, color_system=None, highlight=False)
        monkeypatch.setattr(report, "console", out)
        assert egad("report", f"sweep_dir={sweep_dir}", *overrides) == 0
        return out.file.getvalue().splitlines()

    return run


GROUP = re.compile(r"^(\S.*) · (\d+) runs?( · reference)?$")
METRIC = re.compile(r"^  (\S+) +(-?\d+\.\d{4}) ± (\d+\.\d{4})$")
DELTA = re.compile(r"^    Δ vs kd +([+-]\d+\.\d{4}) \[([+-]\d+\.\d{4}), ([+-]\d+\.\d{4})\] \(n=(\d+)\) (\w+)$")
DECILES = re.compile(r"^  Δ KL by decile +((?:[+-]\d+ ?)+) %$")


def parse_compact(lines):
    """{group label: {"runs": n, "reference": bool, metric: (mean, sd), "delta": (mean, low, high, n, verdict),
    "deciles": [%…]}} in the printed order; every indented line belongs to the group above it."""
    groups, group = {}, None
    for line in lines:
        if m := GROUP.match(line):
            group = groups.setdefault(m[1], {"runs": int(m[2]), "reference": bool(m[3])})
        elif group is not None and (m := METRIC.match(line)):
            group[m[1]] = (float(m[2]), float(m[3]))
        elif group is not None and (m := DELTA.match(line)):
            group["delta"] = (float(m[1]), float(m[2]), float(m[3]), int(m[4]), m[5])
        elif group is not None and (m := DECILES.match(line)):
            group["deciles"] = [int(v) for v in m[1].split()]
        elif line.startswith("  "):
            raise AssertionError(f"unparsed line in a group: {line!r}")
        else:
            group = None
    return groups


def test_compact_layout_in_a_log_shows_each_group_and_its_key_metrics(tmp_path, report_out):
    import json
    import statistics

    from rich.console import Console

    from egad_cli.commands.report import build_table, gather
    from egad_cli.commands.sweep import sort_runs
    from egad_cli.config.commands import ReportConfig
    from egad_cli.ui.tables import rich_table

    sweep = tmp_path / "sweep"
    full_sweep(sweep)
    lines = report_out(sweep)
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    facts = "12 runs (12 done) · sorted by kl_after ↑"
    title = f"{sweep} · {facts}"
    assert lines[0] == title if len(title) <= 80 else lines[:2] == [str(sweep), facts]  # a long path: on its own
    assert lines[-1] == "full table (12 runs × 15 columns): report.md, report.csv"
    groups = parse_compact(lines)
    assert list(groups) == ["method=kd", "method=egad", "method=egad_no_temperature"]  # by mean kl_after, ↑

    # the numbers, from the runs' own files
    data: dict[str, dict[str, list[float]]] = {}
    for run in sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: int(p.name.split("_")[0])):
        summary, evaluation = json.loads((run / "summary.json").read_text()), json.loads((run / "eval.json").read_text())
        mine = data.setdefault(f"method={summary['method']}", {"kl_after": [], "eval.kl_forward": [], "final.loss": [],
                                                              "deciles": []})
        mine["kl_after"].append(summary["kl_after"])
        mine["final.loss"].append(summary["final"]["loss"])
        mine["eval.kl_forward"].append(evaluation["kl_forward"])
        mine["deciles"].append([row["kl_forward"] for row in evaluation["by_entropy_decile"]])
    t3 = 3.182446305284263  # t_{.975, 3}: four seeds
    for label, group in groups.items():
        assert group["runs"] == 4 and group["reference"] == (label == "method=kd")
        for metric in ("kl_after", "eval.kl_forward", "final.loss"):
            want = data[label][metric]
            assert group[metric] == (round(statistics.mean(want), 4), round(statistics.stdev(want), 4)), (label, metric)
        if label == "method=kd":
            assert "delta" not in group and "deciles" not in group
            continue
        diffs = [a - b for a, b in zip(data[label]["kl_after"], data["method=kd"]["kl_after"])]  # seed by seed
        mean, half = statistics.mean(diffs), t3 * statistics.stdev(diffs) / 2
        assert group["delta"][:3] == pytest.approx((mean, mean - half, mean + half), abs=6e-5)
        assert group["delta"][3:] == (4, "higher")
        change = [statistics.mean(a[i] / b[i] - 1 for a, b in zip(data[label]["deciles"], data["method=kd"]["deciles"]))
                  for i in range(2)]
        assert group["deciles"] == [round(100 * c) for c in change]
    # the same text as the seed table of report.md
    md = (sweep / "report.md").read_text()
    assert "| method=egad | 4 | " + " ± ".join(f"{v:.4f}" for v in groups["method=egad"]["kl_after"]) in md

    # much shorter than the full table was at 80 columns
    runs = sort_runs(gather(sweep), "kl_after")
    columns, rows, _, _ = build_table(runs, [c for c in ReportConfig().columns if c != "eval.kl_forward_top_decile"]
                                      + ["eval.kl_forward_top_decile"])
    old = Console(width=80, file=io.StringIO(), color_system=None)
    old.print(rich_table([c.replace(".", "\n", 1) for c in columns], rows))
    assert len(lines) <= 25 and 3 * len(lines) < len(old.file.getvalue().splitlines())


def test_compact_layout_key_metrics_follow_the_sort_metric_and_columns(tmp_path, report_out):
    sweep = tmp_path / "sweep"
    full_sweep(sweep, methods=("kd", "egad"), seeds=2)
    groups = parse_compact(report_out(sweep, "sort_by=eval.ece", "export=false"))
    assert list(groups["method=kd"]) == ["runs", "reference", "eval.ece", "eval.kl_forward", "kl_after"]
    assert list(groups) == ["method=kd", "method=egad"]
    lines = report_out(sweep, "sort_by=eval.top1_agreement", "columns=[eval.ppl_student]", "export=false")
    groups = parse_compact(lines)
    assert list(groups["method=kd"]) == ["runs", "reference", "eval.top1_agreement", "eval.ppl_student"]
    assert list(groups) == ["method=egad", "method=kd"]  # agreement: higher first
    assert lines[-1] == "full table (4 runs × 6 columns): report.md, report.csv with export=true"


def test_group_labels_leave_out_the_keys_a_group_never_sets(tmp_path, report_out):
    """A sweep mixing runs from a teacher cache (no dataset override) with live ones (no teacher_cache)."""
    import json

    values = {("kd", "0"): 3.0, ("kd", "1"): 3.4, ("egad", "0"): 2.9, ("egad", "1"): 3.3}
    sweep = tmp_path / "sweep"
    hand_made_sweep(sweep, values, {key: [1.0, 2.0] for key in values})
    for run in sweep.iterdir():
        overrides = run / ".hydra" / "overrides.yaml"
        live = "method:kd" in run.name
        extra = ["- dataset=text\n", "- dataset.paths=[a.txt]\n"] if live else ["- teacher_cache=/caches/c\n"]
        overrides.write_text("".join(extra) + overrides.read_text())
    groups = parse_compact(report_out(sweep))
    assert {frozenset(label.split()) for label in groups} == {
        frozenset({"dataset=text", "dataset.paths=[a.txt]", "method=kd"}),
        frozenset({"teacher_cache=/caches/c", "method=egad"})}
    assert "None" not in "\n".join(report_out(sweep, "export=false"))
    assert "=None" not in (sweep / "report.md").read_text()
    assert set(json.loads((sweep / "report-plots.json").read_text())["curves"]) == set(groups)


def test_wide_terminal_keeps_the_full_table(tmp_path, report_out):
    from rich.console import Console
    from rich.text import Text

    from egad_cli.commands.report import STATUS_STYLE, build_table, gather
    from egad_cli.commands.sweep import differing_overrides, sort_runs
    from egad_cli.config.commands import ReportConfig
    from egad_cli.ui.tables import rich_table

    sweep = tmp_path / "sweep"
    full_sweep(sweep)
    lines = report_out(sweep, width=250, terminal=True)
    runs = sort_runs(gather(sweep), "kl_after")
    columns, rows, _, _ = build_table(runs, [c for c in ReportConfig().columns if c in {m for r in runs for m in r.metrics}])
    _, common = differing_overrides(runs)
    want = Console(width=250, file=io.StringIO(), force_terminal=True, color_system=None)
    want.print(rich_table([c.replace(".", "\n", 1) for c in columns],
                          [[Text(str(c), style=STATUS_STYLE.get(c, "")) if i == 1 else c for i, c in enumerate(r)]
                           for r in rows],
                          caption="common overrides: " + " ".join(f"{k}={v}" for k, v in common.items()) if common
                          else None, title=f"{sweep} · 12 runs (12 done) · sorted by kl_after ↑"))
    table = want.file.getvalue().splitlines()
    assert lines[:len(table)] == table and len(table) == 12 + 6  # a row per run, unfolded
    text = "\n".join(lines)
    assert "over seeds: kl_after" in text and "in brief" in text and "full table (" not in text
    # a terminal too narrow for it: the compact layout, with styles but every line within the width
    narrow = report_out(sweep, "export=false", width=80, terminal=True)
    assert all(len(line) <= 80 for line in narrow) and set(parse_compact(narrow)) == {
        "method=kd", "method=egad", "method=egad_no_temperature"}


def test_narrow_terminal_with_few_runs_shows_one_column_per_job(tmp_path, report_out):
    sweep = tmp_path / "sweep"
    full_sweep(sweep, methods=("kd", "egad"), seeds=1)
    lines = report_out(sweep, "export=false", width=80, terminal=True)
    assert "one column per job" in " ".join(lines).replace("\n", "") and all(len(line) <= 80 for line in lines)
