"""Tables for the terminal (rich) and for export (Markdown, CSV-ready strings), one formatting rule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

MISSING_CELL = "—"


def fmt(value: Any, digits: int = 4) -> str:
    """A cell: None → '—'; ints with thousands separators; floats with `digits` significant digits
    (at least: 1234.5 → '1,234'), `digits` decimals below 1, scientific below 1e-3 or from 1e7 up."""
    if value is None:
        return MISSING_CELL
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        size = abs(value)
        if value != 0 and (size >= 1e7 or size < 1e-3):
            return f"{value:.{digits - 2}e}"
        if size >= 1000:
            decimals = 0
        elif size >= 1:
            decimals = max(0, digits - 1 - math.floor(math.log10(size)))
        else:
            decimals = digits
        return f"{value:,.{decimals}f}"
    return str(value)


def rich_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
               numeric: Sequence[bool] | None = None, caption: str | None = None) -> Table:
    """A rich Table; cells that are not Text are formatted with :func:`fmt` (numbers right-aligned)."""
    if numeric is None:
        numeric = [_is_numeric_column(rows, i) for i in range(len(columns))]
    table = Table(title=title, caption=caption, header_style="bold", title_justify="left",
                  caption_justify="left")
    for name, is_num in zip(columns, numeric):
        table.add_column(name, justify="right" if is_num else "left", overflow="fold")
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(fmt(cell)) for cell in row))
    return table


def table_width(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
    """Cells a rich table needs so that no header or cell wraps (one space of padding each side)."""
    widths = []
    for i, name in enumerate(columns):
        cells = [(c.plain if isinstance(c, Text) else fmt(c)) for c in (r[i] for r in rows)]
        widths.append(max([len(line) for line in str(name).splitlines()] + [len(c) for c in cells] + [1]))
    return sum(widths) + 3 * len(widths) + 1


def transpose(columns: Sequence[str], rows: Sequence[Sequence[Any]],
              key: int = 0) -> tuple[list[str], list[list]]:
    """Rows become columns (headed by column `key` of each row): for few rows with many columns."""
    head = ["", *(str(r[key].plain if isinstance(r[key], Text) else fmt(r[key])) for r in rows)]
    body = [[Text(str(name)), *(r[i] for r in rows)] for i, name in enumerate(columns) if i != key]
    return head, body


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""

    def cell(value: Any) -> str:
        return (value.plain if isinstance(value, Text) else fmt(value)).replace("|", "\\|").replace("\n", " ")

    align = ["---:" if _is_numeric_column(rows, i) else "---" for i in range(len(columns))]
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _is_numeric_column(rows: Sequence[Sequence[Any]], i: int) -> bool:
    values = [r[i] for r in rows if r[i] is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
