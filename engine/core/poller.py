"""One way to run work in the background: a daemon thread that calls a function every so
often until closed, wakes early when asked, and survives the function's failures.

Every loop a process keeps (the delta, the item watch, the embedding follower, the catalog
listener, the impression log, the rules and the running experiment) is one Poller. A failure
is logged and the next round retries: searches keep the last good state meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Poller:
    """Calls `work` in a thread of its own: once at start when `at_start`, then every
    `interval_s` seconds, or sooner after wake(). `interval_s` may be a function, asked after
    each round (to look again sooner while something is pending, say).

    `work` that blocks for long (a LISTEN connection) checks `stopping` and returns when it is
    set. A failure is logged as `failed` says and retried after the interval, so `on_error`
    can reset what the failed round left half done.
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], object],
        interval_s: float | Callable[[], float],
        *,
        at_start: bool = False,
        failed: str | None = None,
        level: int = logging.ERROR,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if not callable(interval_s) and not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.name = name
        self._interval = interval_s
        self.stopping = threading.Event()
        self._work = work
        self._at_start = at_start
        self._failed = failed or f"the {name} poll failed"
        self._level = level
        self._on_error = on_error
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the thread (once; never again after close)."""
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self.stopping.is_set():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def wake(self) -> None:
        """Run the next round now rather than at the end of the interval."""
        self._wake.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and wait up to timeout_s for the round in progress to end."""
        self.stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout_s)

    def interval(self) -> float:
        """Seconds until the next round."""
        return self._interval() if callable(self._interval) else self._interval

    def _run(self) -> None:
        wait = 0.0 if self._at_start else self.interval()
        while True:
            if wait > 0:
                self._wake.wait(wait)
                self._wake.clear()
            if self.stopping.is_set():
                return
            try:
                self._work()
            except Exception as error:
                if self.stopping.is_set():  # failed because it is closing: nothing to retry
                    return
                log.log(self._level, self._failed, exc_info=True)
                if self._on_error is not None:
                    self._on_error(error)
            wait = self.interval()
