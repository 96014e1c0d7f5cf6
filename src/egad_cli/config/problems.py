"""Collecting config problems so that every one of them is reported at once."""

from __future__ import annotations

from typing import Any


class Problems(list):
    """Accumulates 'key: message' strings, so every problem is reported at once."""

    def check(self, ok: bool, key: str, message: str) -> None:
        if not ok:
            self.append(f"{key}: {message}")

    def choice(self, value: Any, key: str, choices) -> None:
        self.check(value in choices, key, f"got {value!r}; valid choices are {', '.join(choices)}")
