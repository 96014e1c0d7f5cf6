"""The terminal histogram: fixed width, right counts, log scale, markers (captured with a rich Console)."""

from __future__ import annotations

import io
import re

import pytest
import torch
from rich.console import Console

from egad_cli.evaluation.entropy import histogram
from egad_cli.ui.histogram import bar, render_histogram

ROW = re.compile(r"^\s*([\d.]+) – ([\d.]+) │(.*)│\s+([\d,]+)\s+([\d.]+)%(.*)$")


def capture(renderable, width: int = 80) -> list[str]:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text().rstrip("\n").splitlines()


def parse(lines: list[str]) -> list[tuple[float, float, str, int, float, str]]:
    rows = []
    for line in lines:
        m = ROW.match(line)
        assert m, f"unexpected row {line!r}"
        lo, hi, bar_text, count, pct, rest = m.groups()
        rows.append((float(lo), float(hi), bar_text, int(count.replace(",", "")), float(pct), rest.strip()))
    return rows


def test_rows_fit_the_width_and_carry_the_counts():
    values = torch.tensor([0.1, 0.2, 0.3, 1.2, 3.9, 3.95] + [3.5] * 1000)
    edges, counts = histogram(values, bins=4, hi=4.0)
    assert counts == [3, 1, 0, 1002]
    for width in (80, 60, 120):
        lines = capture(render_histogram(edges, counts, width=width), width)
        assert len(lines) == 4
        assert all(len(line) == width for line in lines), [len(x) for x in lines]   # rows fill the width
        rows = parse(lines)
        assert [r[3] for r in rows] == [3, 1, 0, 1002]
        assert [(r[0], r[1]) for r in rows] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
        assert sum(r[4] for r in rows) == pytest.approx(100.0, abs=0.2)
        bars = [r[2] for r in rows]
        assert set(bars[3]) == {"█"}                      # the largest bin fills the bar
        assert bars[2].strip() == ""                      # an empty bin draws nothing
        assert all(len(b) == len(bars[0]) for b in bars)  # bars share one column


def test_log_scale_lengthens_small_bins():
    edges, counts = [0.0, 1.0, 2.0], [10, 1000]
    linear = parse(capture(render_histogram(edges, counts, width=80)))
    log = parse(capture(render_histogram(edges, counts, width=80, log_scale=True)))
    assert len(log[0][2].rstrip()) > 3 * len(linear[0][2].rstrip())
    assert [r[3] for r in log] == [10, 1000]


def test_markers_sit_on_their_bin_and_keep_the_width():
    edges, counts = [0.0, 1.0, 2.0, 3.0], [5, 7, 9]
    lines = capture(render_histogram(edges, counts, width=80, markers={"hard": 2.5, "gate s=0": 0.0,
                                                                          "outside": 7.0}))
    rows = parse(lines)
    assert [r[5] for r in rows] == ["◂ gate s=0", "", "◂ hard"]
    assert max(len(line) for line in lines) <= 80


def test_bar_eighths():
    assert bar(0.0, 4) == "    " and bar(1.0, 4) == "████"
    assert bar(0.5, 4) == "██  " and bar(1 / 32, 4) == "▏   "
    assert all(len(bar(f / 100, 7)) == 7 for f in range(101))


def test_mismatched_edges_are_refused():
    with pytest.raises(ValueError):
        render_histogram([0.0, 1.0], [1, 2])
