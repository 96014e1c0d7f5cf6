"""A rich progress bar for training: step, loss, tokens/s and ETA; falls back to log lines when disabled."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    def __init__(self, total: int, start: int, enabled: bool = True, console=None):
        """console=None: silent (non-zero ranks). enabled=False, or a console that is not a terminal (CI,
        nohup, a log file, where a live bar would print nothing until the end): plain log lines."""
        enabled = enabled and console is not None and console.is_terminal
        self.total, self.enabled, self.console = total, enabled, console
        self.progress = Progress(
            TextColumn("[bold]distill"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not enabled)
        self.task = self.progress.add_task("distill", total=total, completed=start, info="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, step: int, row: dict | None) -> None:
        info = None
        if row is not None:
            info = f"loss {row['loss']:.4f}  {row['tokens_per_s']:.0f} tok/s"
            if not self.enabled and self.console is not None:
                self.console.print(f"step {step}/{self.total}  {info}  lr {row['lr']:.2e}")
        self.progress.update(self.task, completed=step, **({"info": info} if info is not None else {}))


def pass_progress(description: str, total: int, enabled: bool = True, console=None) -> Progress:
    """A progress bar for a long no-grad pass (evaluation, entropy inspection)."""
    return Progress(TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not enabled, transient=True)
