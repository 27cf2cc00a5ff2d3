"""How long jobs report progress: a callable the CLI draws as a bar and the admin page polls."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, phase: str, done: int, total: int) -> None:
        """Phase name, units done so far in the phase, and the phase's total."""


def no_progress(phase: str, done: int, total: int) -> None:
    """The progress sink for callers that do not watch."""
