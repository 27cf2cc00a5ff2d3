"""What the app keeps in app.extensions: the engine's Runtime, shared by every view, and under
`recsearch serve` how many of the server's workers have loaded (web.server.Readiness)."""

from __future__ import annotations

from typing import Protocol

from flask import Flask

from engine.runtime import Runtime

EXTENSION = "recsearch"
WORKERS = "recsearch.workers"
IN_FLIGHT = "recsearch.in_flight"  # web.inflight.InFlight: requests under way


def runtime_of(app: Flask) -> Runtime:
    return app.extensions[EXTENSION]  # type: ignore[no-any-return]


class WorkersLoaded(Protocol):
    """web.server.Readiness as the views see it."""

    def loaded_of(self) -> tuple[int, int]:
        """(workers loaded so far, workers of the first round)."""
        ...


def workers_of(app: Flask) -> WorkersLoaded | None:
    """The server's readiness under `recsearch serve`; None in one process (--dev, tests)."""
    return app.extensions.get(WORKERS)
