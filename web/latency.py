"""Recent /v1/search latencies, for the admin page's p50/p95/p99 over the last minutes."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np
from flask import current_app

LATENCY = "recsearch_latency"
LATENCY_WINDOW_S = 300


class LatencyLog:
    """Recent /v1/search latencies, for p50/p95/p99 over the last minutes."""

    def __init__(self, size: int = 10_000) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._samples.append((time.time(), ms))

    def summary(self, window_s: float = LATENCY_WINDOW_S) -> dict[str, Any]:
        cutoff = time.time() - window_s
        with self._lock:
            recent = [(t, ms) for t, ms in self._samples if t >= cutoff]
        if not recent:
            return {"count": 0, "window_s": window_s}
        values = np.array([ms for _, ms in recent])
        per_minute: dict[int, list[float]] = {}
        for t, ms in recent:
            per_minute.setdefault(int(t // 60) * 60, []).append(ms)
        return {
            "count": len(values),
            "window_s": window_s,
            "p50": round(float(np.percentile(values, 50)), 2),
            "p95": round(float(np.percentile(values, 95)), 2),
            "p99": round(float(np.percentile(values, 99)), 2),
            "per_minute": [
                {
                    "t": t,
                    "p50": round(float(np.percentile(v, 50)), 2),
                    "p99": round(float(np.percentile(v, 99)), 2),
                    "count": len(v),
                }
                for t, v in sorted(per_minute.items())
            ],
        }


def latency() -> LatencyLog:
    return current_app.extensions[LATENCY]  # type: ignore[no-any-return]
