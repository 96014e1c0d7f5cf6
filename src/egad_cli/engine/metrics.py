"""metrics.jsonl: one JSON object per logged step, appended and flushed so a crash loses nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

from egad_cli.errors import UserError


def tensorboard_available() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError("logging.tensorboard=true needs the tensorboard package: pip install tensorboard "
                        "(or set logging.tensorboard=false; metrics.jsonl is always written)") from None


class MetricsWriter:
    def __init__(self, path: Path, enabled: bool = True, history: list[dict] | None = None,
                 tensorboard: bool = False):
        """history: rows of the run this one resumes (up to its checkpoint); they start the file.
        tensorboard: also write TensorBoard events next to metrics.jsonl (in tb/)."""
        self.path = path
        self.enabled = enabled
        self.tb = None
        if enabled:
            path.write_text("".join(json.dumps(r) + "\n" for r in history or []))
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tb"))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        if self.tb is not None:
            for key, value in clean.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, clean["step"])
            self.tb.flush()


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number} is not a metrics row (the file is damaged); move it aside to resume "
                            f"without the earlier curve, or repair that line")
        rows.append(row)
    return rows
