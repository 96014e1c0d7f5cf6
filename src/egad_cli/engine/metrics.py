"""metrics.jsonl: one JSON object per logged step, appended and flushed so a crash loses nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsWriter:
    def __init__(self, path: Path, enabled: bool = True, history: list[dict] | None = None):
        """history: rows of the run this one resumes (up to its checkpoint); they start the file."""
        self.path = path
        self.enabled = enabled
        if enabled:
            path.write_text("".join(json.dumps(r) + "\n" for r in history or []))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
