"""Search latency for the admin page, read from the histogram that /metrics exposes.

The figures are recsearch_http_request_duration_seconds of the search routes with status
200, merged over every worker under gunicorn (the same files a scrape reads), so the page
and Prometheus agree. A histogram counts since the server started; the recent window and the
per-minute bars come from snapshots of its bucket counts, which this process keeps each time
the admin status is asked (the page asks every 5 s) and subtracts. p50/p95/p99 are
interpolated inside a bucket, as PromQL's histogram_quantile does: an estimate within the
width of the bucket it falls in (web/metrics.py REQUEST_BUCKETS_S).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flask import current_app
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from web import metrics

LATENCY = "recsearch_latency"
SEARCH_ROUTES = ("/v1/search", "/admin/api/search")
WINDOW_S = 300.0
# Snapshots closer together than this add nothing but memory (two pages open, say).
SNAPSHOT_EVERY_S = 5.0
QUERY = (
    'recsearch_http_request_duration_seconds{route=~"/v1/search|/admin/api/search",status="200"}'
)

Counts = tuple[float, ...]  # cumulative count per bucket, the last one +Inf


def search_buckets() -> tuple[list[float], Counts]:
    """(upper bounds in seconds, ending with inf; cumulative counts) of successful searches
    since the server started, every worker's."""
    families: Iterable[Metric]
    if metrics.is_multiprocess():
        families = MultiProcessCollector(None).collect()
    else:
        families = metrics.REQUEST_SECONDS.collect()
    counts = dict.fromkeys((*metrics.REQUEST_BUCKETS_S, math.inf), 0.0)
    for family in families:
        if family.name != "recsearch_http_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_bucket")
                and labels.get("route") in SEARCH_ROUTES
                and labels.get("status") == "200"
            ):
                counts[float(labels["le"])] += sample.value
    bounds = sorted(counts)
    return bounds, tuple(counts[b] for b in bounds)


def quantile(bounds: Sequence[float], cumulative: Sequence[float], q: float) -> float | None:
    """The q-quantile (seconds) of a histogram, interpolated linearly inside its bucket; the
    highest finite bound when it falls in +Inf; None with no observations."""
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


class LatencyHistory:
    """Snapshots of the search histogram's cumulative counts over the last window."""

    def __init__(self, window_s: float = WINDOW_S, every_s: float = SNAPSHOT_EVERY_S) -> None:
        self.window_s = window_s
        self.every_s = every_s
        self.clock: Callable[[], float] = time.time  # wall clock: the bars are labelled by it
        self._snapshots: deque[tuple[float, Counts]] = deque()
        self._lock = threading.Lock()

    def summary(self, bounds: Sequence[float], counts: Counts) -> dict[str, Any]:
        """p50/p95/p99 and count over the window, and per-minute p50/p99, in ms.

        Before this process has a snapshot as old as the window (the first minutes after the
        page is first opened), the figures are since the server started, and say so.
        """
        now = self.clock()
        with self._lock:
            if not self._snapshots or now - self._snapshots[-1][0] >= self.every_s:
                self._snapshots.append((now, counts))
            # Keep the newest snapshot at or before the window's start: the window's base.
            while len(self._snapshots) >= 2 and self._snapshots[1][0] <= now - self.window_s:
                self._snapshots.popleft()
            history = list(self._snapshots)
        if history[-1][0] != now:
            history.append((now, counts))
        base = history[0] if history[0][0] <= now - self.window_s else None
        start = base[1] if base is not None else tuple(0.0 for _ in counts)
        window = _difference(counts, start)
        out: dict[str, Any] = {
            "source": "all workers" if metrics.is_multiprocess() else "this process",
            "metric": QUERY,
            "window": f"last {self.window_s:g} s" if base else "since the server started",
            "window_s": round(now - base[0], 1) if base else None,
            "count": int(window[-1]),
        }
        if window[-1] > 0:
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                out[name] = _ms(quantile(bounds, window, q))
        out["per_minute"] = _per_minute(bounds, history, now - self.window_s)
        return out


def _difference(later: Counts, earlier: Counts) -> Counts:
    return tuple(max(0.0, a - b) for a, b in zip(later, earlier, strict=True))


def _per_minute(
    bounds: Sequence[float], history: list[tuple[float, Counts]], since: float
) -> list[dict[str, Any]]:
    """Counts between consecutive snapshots, added up by the minute the later one fell in."""
    minutes: dict[int, list[float]] = {}
    for (_, earlier), (t, later) in zip(history, history[1:], strict=False):
        if t < since:
            continue
        minute = int(t // 60) * 60
        delta = _difference(later, earlier)
        if minute in minutes:
            minutes[minute] = [a + b for a, b in zip(minutes[minute], delta, strict=True)]
        else:
            minutes[minute] = list(delta)
    return [
        {
            "t": minute,
            "p50": _ms(quantile(bounds, counts, 0.5)),
            "p99": _ms(quantile(bounds, counts, 0.99)),
            "count": int(counts[-1]),
        }
        for minute, counts in sorted(minutes.items())
        if counts[-1] > 0
    ]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def latency_summary() -> dict[str, Any]:
    """The admin status's latency_ms: this app's history over the current histogram."""
    history: LatencyHistory = current_app.extensions[LATENCY]
    return history.summary(*search_buckets())
