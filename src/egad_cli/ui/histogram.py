"""Horizontal terminal histograms: one row per bin, bars drawn with eighth-block characters.

    0.00 –  0.33 │████████████████████▋          │  1,234  30.1%  ◂ gate s=0
    0.33 –  0.67 │██████▍                        │    385   9.4%

Every row fits the given width exactly (no wrapping), so the output is the same on any
terminal of that width and can be captured in tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise

from rich.text import Text

EIGHTHS = " ▏▎▍▌▋▊▉"
FULL = "█"
MIN_BAR = 8


def bar(fraction: float, width: int) -> str:
    """A bar of `width` cells filled to `fraction` in [0, 1], with 1/8-cell resolution, padded with spaces."""
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, rest = divmod(eighths, 8)
    text = FULL * full + (EIGHTHS[rest] if rest and full < width else "")
    return text + " " * (width - len(text))


def _decimals(edges: Sequence[float]) -> int:
    step = min((b - a for a, b in pairwise(edges)), default=1.0)
    return 2 if step >= 0.01 or step == 0 else min(6, 1 - math.floor(math.log10(step)))


def marker_bins(edges: Sequence[float], markers: Mapping[str, float]) -> dict[int, list[str]]:
    """Which bin each marker value falls into (values outside the edges are dropped)."""
    out: dict[int, list[str]] = {}
    last = len(edges) - 2
    for label, value in markers.items():
        if value is None or not (edges[0] <= value <= edges[-1]):
            continue
        index = next((i for i in range(last + 1) if edges[i] <= value < edges[i + 1]), last)
        out.setdefault(index, []).append(label)
    return out


def render_histogram(edges: Sequence[float], counts: Sequence[int], *, width: int = 80,
                     log_scale: bool = False, markers: Mapping[str, float] | None = None,
                     style: str = "cyan") -> Text:
    """Rows 'lo – hi │bar│ count pct [◂ markers]' fitting `width` cells.

    edges: n + 1 bin edges; counts: n counts. log_scale: bar length ∝ log(1 + count).
    markers: {label: value}, shown after the row of the bin that holds the value.
    """
    if len(edges) != len(counts) + 1:
        raise ValueError(f"need len(edges) == len(counts) + 1, got {len(edges)} and {len(counts)}")
    total = sum(counts)
    top = max(counts, default=0)
    digits = _decimals(edges)
    edge_w = max(len(f"{e:.{digits}f}") for e in edges)
    count_w = max(len(f"{c:,}") for c in counts)
    marks = marker_bins(edges, markers or {})
    mark_w = max((len(" ◂ " + ", ".join(v)) for v in marks.values()), default=0)
    fixed = (2 * edge_w + 5) + (count_w + 10) + mark_w  # "lo – hi │" + "│ count  xxx.x%" + markers
    bar_w = max(MIN_BAR, width - fixed)
    scale = (lambda c: math.log1p(c) / math.log1p(top)) if log_scale else (lambda c: c / top)
    out = Text(no_wrap=True, overflow="crop")
    for i, count in enumerate(counts):
        pct = 100.0 * count / total if total else 0.0
        out.append(f"{edges[i]:>{edge_w}.{digits}f} – {edges[i + 1]:>{edge_w}.{digits}f} │", style="dim")
        out.append(bar(scale(count) if top else 0.0, bar_w), style=style)
        out.append(f"│ {count:>{count_w},}  {pct:5.1f}%")
        if i in marks:
            out.append(" ◂ " + ", ".join(marks[i]), style="yellow")
        if i < len(counts) - 1:
            out.append("\n")
    return out
