"""Queries that arrive together are encoded together: one encoder call per batch.

A worker serves several requests at once (threads), and each used to encode its query alone:
on two cores, two workers ran one short ONNX call after another, and throughput stopped
growing past 4 connections. Here one call runs at a time per process; queries that arrive
while it runs wait for it and go together in the next call. Under load, batches form by
themselves, and a lone query never waits: with nothing running it is encoded at once.

When the last batch held more than one query (the process is busy), a query that finds the
encoder idle also waits up to max_wait_s for company before it goes, so that the requests
of one burst share a call instead of the first going alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np


class _Slot:
    __slots__ = ("text", "vector", "error")

    def __init__(self, text: str) -> None:
        self.text = text
        self.vector: np.ndarray | None = None
        self.error: BaseException | None = None


class QueryBatcher:
    """encode(texts) → (len(texts), dim), called with batches of concurrent callers' texts."""

    def __init__(
        self,
        encode: Callable[[Sequence[str]], np.ndarray],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.0015,
    ) -> None:
        self._encode = encode
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._running = False  # an encoder call is under way
        self._busy = False  # the last batch held more than one query
        self.calls = 0  # encoder calls made, for tests and metrics
        self.encoded = 0  # texts encoded

    def __call__(self, text: str) -> np.ndarray:
        """(dim,) the text's vector, encoded in a batch with the queries beside it."""
        slot = _Slot(text)
        with self._cond:
            self._pending.append(slot)
            if self._running:
                self._cond.notify_all()  # a waiting leader may now have a full batch
            # Wait while another call runs; lead when none does and this query is not done
            # (a full batch may have left it for the next call).
            while slot.vector is None and slot.error is None:
                if self._running:
                    self._cond.wait()
                else:
                    self._lead()
        if slot.error is not None:
            raise slot.error
        assert slot.vector is not None
        return slot.vector

    def _lead(self) -> None:
        """Encode what is pending (this caller's query among it); called holding the lock."""
        self._running = True
        if self._busy and self.max_wait_s > 0:
            deadline = time.monotonic() + self.max_wait_s
            while len(self._pending) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        self._cond.release()
        try:
            try:
                vectors = self._encode([s.text for s in batch])
                for s, v in zip(batch, vectors, strict=True):
                    s.vector = v
            except BaseException as exc:  # every caller in the batch gets the error
                for s in batch:
                    s.error = exc
        finally:
            self._cond.acquire()
            self.calls += 1
            self.encoded += len(batch)
            self._busy = len(batch) > 1
            self._running = False
            self._cond.notify_all()  # one of those left pending leads the next call
