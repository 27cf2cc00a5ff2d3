"""What every search needs from SQL besides the user, kept per process and read again in the
background: the merchandising rules (engine.ranking.rule_store) and the running experiment
(engine.ranking.experiments).

Both used to be read again inside a search once a second: one search a second per process
paid a session and a query on top of its own read (0.2 and 0.26 ms measured alone on the
100k bench store, more with cold caches), which is where a busy server's p99 lives. Here:
- the first get reads synchronously, so a process never serves without them;
- then a daemon thread reads again every reload_s, and a search only takes the value;
- a write in this process calls invalidate(): the next get reads synchronously again, so the
  process that wrote sees its write at once. Other processes see it within reload_s, as
  before. A background read that began before an invalidate is dropped (the generation
  moved), so it cannot put back what the write replaced.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from engine.core.poller import Poller

T = TypeVar("T")


class Reloaded(Generic[T]):
    """A value read by `read(previous)` (previous: None the first time), followed in the
    background every reload_s once a get has read it."""

    def __init__(self, read: Callable[[T | None], T], reload_s: float, name: str) -> None:
        self._read = read
        self.reload_s = reload_s
        self.name = name
        self._value: T | None = None
        self._current = False  # read, and not invalidated since
        self._generation = 0  # invalidations so far
        self._lock = threading.Lock()
        self._poller = Poller(
            name, self.refresh, reload_s, failed=f"reading the {name} again failed"
        )

    def get(self) -> T:
        if not self._current:
            with self._lock:
                if not self._current:
                    self._value = self._read(self._value)
                    self._current = True
            self._poller.start()
        return self._value  # type: ignore[return-value]  # read above: a T

    def invalidate(self) -> None:
        """After a write in this process: the next get reads again before it answers."""
        with self._lock:
            self._generation += 1
            self._current = False

    def refresh(self) -> None:
        """Read again now (what the background thread does every reload_s)."""
        generation = self._generation
        value = self._read(self._value)
        with self._lock:
            if generation == self._generation and self._current:
                self._value = value

    def close(self) -> None:
        self._poller.close()
