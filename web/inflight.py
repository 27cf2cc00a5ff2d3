"""How many requests the server has under way, every worker counted: the encoder's cue to
encode a lone query on every core and a crowded one on one (Runtime.share_cores).

Why across workers: wrk's and most clients' connections are kept alive, so each stays with
the worker that accepted it. At 4 connections over 2 workers a split of 3 and 1 is common,
and the worker with one connection would think itself alone while the other holds the
cores. Each worker counts its own requests (a thread lock) into its own slot in shared
memory (web.slots.WorkerSlots); a reader sums the slots, and the master clears a dead
worker's (clear).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from web.slots import WorkerSlots

WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


class InFlight:
    """Requests under way: this process's, in its slot; the server's, summed over slots."""

    def __init__(self, slots: int = 1) -> None:
        self._slots = WorkerSlots(slots)
        self._mine = 0
        self._lock = threading.Lock()

    def claim(self, age: int) -> None:
        """In a worker after the fork: count in gunicorn's worker number's slot."""
        self._slots.claim(age)
        self._mine = 0

    def clear(self, age: int) -> None:
        """In the master when a worker has exited: nothing of its is under way any more."""
        self._slots.clear(age)

    def count(self) -> int:
        """Requests under way in every worker (a slot read mid-update is at most one off)."""
        return int(self._slots.values.sum())

    def crowded(self) -> bool:
        """Another request is under way beside the caller's."""
        return self.count() > 1

    def wrap(self, app: WsgiApp) -> WsgiApp:
        """WSGI middleware counting each request from its start until its response is made."""

        def counted(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            self._add(1)
            try:
                return app(environ, start_response)
            finally:
                self._add(-1)

        return counted

    def _add(self, step: int) -> None:
        with self._lock:
            self._mine += step
            self._slots.put(self._mine)
