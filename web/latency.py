"""Search latency for the admin page over the last minutes, read from the histogram that
/metrics exposes.

The figures are recsearch_http_request_duration_seconds of the search routes with status
200, merged over every worker under gunicorn (the same files a scrape reads), so the page
and Prometheus agree. A histogram counts since the server started; what happened when comes
from samples of its cumulative bucket counts, (time, counts), taken every SAMPLE_EVERY_S.

Where the samples live decides whether every worker draws the same chart. Under gunicorn they
are one small JSON file beside the workers' metric files (SAMPLES_FILE: not *.db, so a scrape
does not read it), changed under an flock: each worker's sampler thread adds a sample when
the newest is SAMPLE_EVERY_S old, so the workers together take about one per interval,
whichever answers the admin page reads the same ring, and a worker killed and replaced loses
nothing. In one process (`serve --dev`, tests) the ring is in memory, like the histogram.

The counts between two samples are spread evenly over the time between them, then added up
per STEP_S of the chart; p50/p95/p99 are interpolated inside a bucket, as PromQL's
histogram_quantile does: an estimate within the width of the bucket it falls in
(web/metrics.py REQUEST_BUCKETS_S).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from engine.core.files import locked, write_atomically
from engine.core.poller import Poller
from web import metrics

log = logging.getLogger(__name__)

SEARCH_ROUTES = ("/v1/search", "/admin/api/search")
QUERY = (
    'recsearch_http_request_duration_seconds{route=~"/v1/search|/admin/api/search",status="200"}'
)
WINDOW_S = 900.0  # what the chart shows: the last 15 minutes
STEP_S = 30.0  # one point of the chart
SAMPLE_EVERY_S = 10.0  # a sample costs one read of every worker's metric files
KEEP_S = WINDOW_S  # older samples go, but the one the window starts from
SAMPLES_FILE = "latency-samples.json"
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))

Counts = tuple[float, ...]  # cumulative count per bucket, the last one +Inf
Sample = tuple[float, Counts]  # (Unix time, counts then)


def multiprocess_dir() -> Path | None:
    """The workers' shared metrics folder under gunicorn, or None when the metrics are in this
    process's memory. It is prometheus_client's own variable (web/server.py sets it before
    the workers start), read here as prometheus_client reads it, not a setting."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") if metrics.is_multiprocess() else None
    return Path(folder) if folder else None


def search_buckets(folder: Path | None = None) -> tuple[list[float], Counts]:
    """(upper bounds in seconds, ending with inf; cumulative counts) of successful searches
    since the server started: every worker's, read from `folder` (default: the workers'
    metrics folder under gunicorn), else this process's."""
    folder = folder if folder is not None else multiprocess_dir()
    families: Iterable[Metric]
    if folder is not None:
        families = MultiProcessCollector(None, path=str(folder)).collect()
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
    total = cumulative[-1] if len(cumulative) else 0.0
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


class SampleRing:
    """Samples of the cumulative counts, oldest first; add() keeps at most one per every_s."""

    def add(self, now: float, counts: Counts, every_s: float = SAMPLE_EVERY_S) -> list[Sample]:
        """Add (now, counts) unless the newest sample is under every_s old; drop what is past
        KEEP_S (keeping the sample a window that old starts from). All samples, oldest first."""
        raise NotImplementedError

    def read(self) -> list[Sample]:
        raise NotImplementedError

    def is_due(self, now: float, every_s: float = SAMPLE_EVERY_S) -> bool:
        """Whether a sample may be due (cheap: no counts read)."""
        return True


def _added(
    samples: list[Sample], now: float, counts: Counts, every_s: float
) -> list[Sample] | None:
    """samples with (now, counts) added and the old ones dropped, or None to keep them."""
    if samples and len(samples[-1][1]) != len(counts):
        samples = []  # other buckets (REQUEST_BUCKETS_S changed under a running server)
    elif samples and now - samples[-1][0] < every_s:
        return None
    samples = [*samples, (now, counts)]
    while len(samples) >= 2 and samples[1][0] <= now - KEEP_S:
        samples.pop(0)
    return samples


class MemoryRing(SampleRing):
    """One process's samples (the histogram is in this process's memory too)."""

    def __init__(self) -> None:
        self._samples: list[Sample] = []
        self._lock = threading.Lock()

    def add(self, now: float, counts: Counts, every_s: float = SAMPLE_EVERY_S) -> list[Sample]:
        with self._lock:
            changed = _added(self._samples, now, counts, every_s)
            if changed is not None:
                self._samples = changed
            return list(self._samples)

    def read(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)


class FileRing(SampleRing):
    """The workers' shared samples: a JSON file replaced atomically under an flock, so a
    reader without the lock sees a whole file, and two workers never both add one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_path = path.with_name(f".{path.name}.lock")

    def add(self, now: float, counts: Counts, every_s: float = SAMPLE_EVERY_S) -> list[Sample]:
        with locked(self.lock_path):
            samples = self.read()
            changed = _added(samples, now, counts, every_s)
            if changed is None:
                return samples
            text = json.dumps({"samples": [[t, list(c)] for t, c in changed]})

            def put(tmp: Path) -> None:
                tmp.write_text(text, encoding="utf-8")

            write_atomically(self.path, put)
            return changed

    def read(self) -> list[Sample]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [(float(t), tuple(float(c) for c in counts)) for t, counts in data["samples"]]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:  # not ours: start the ring again
            log.warning("%s is not a list of latency samples (%s); starting again", self.path, exc)
            return []

    def is_due(self, now: float, every_s: float = SAMPLE_EVERY_S) -> bool:
        try:
            return now - self.path.stat().st_mtime >= every_s
        except FileNotFoundError:
            return True


_MEMORY = MemoryRing()
_FILES: dict[Path, FileRing] = {}


def ring(folder: Path | None = None) -> SampleRing:
    """The samples every worker shares under gunicorn (a file in `folder`, default the
    workers' metrics folder), else this process's."""
    folder = folder if folder is not None else multiprocess_dir()
    if folder is None:
        return _MEMORY
    path = folder / SAMPLES_FILE
    if path not in _FILES:
        _FILES[path] = FileRing(path)
    return _FILES[path]


def take_sample(
    folder: Path | None = None, now: float | None = None, counts: Counts | None = None
) -> list[Sample]:
    """Add a sample of the counts now (read unless given) to the ring, unless one is under
    SAMPLE_EVERY_S old; the ring's samples, oldest first."""
    now = time.time() if now is None else now
    samples = ring(folder)
    if not samples.is_due(now):
        return samples.read()
    return samples.add(now, counts if counts is not None else search_buckets(folder)[1])


def series(
    bounds: Sequence[float],
    samples: Sequence[Sample],
    now: float,
    window_s: float = WINDOW_S,
    step_s: float = STEP_S,
) -> dict[str, Any]:
    """The chart: per step of the last window_s (aligned to step_s, the last one in progress)
    the searches, their rate and p50/p95/p99 in ms, and the same over the whole window.

    samples: (time, cumulative counts), oldest first; the last should be the counts now. What
    happened between two samples is spread evenly between them; before the first sample
    nothing is known (covered_since says from when the figures count).
    """
    n_steps = max(1, int(round(window_s / step_s)))
    until = math.ceil(now / step_s) * step_s
    since = until - n_steps * step_s
    per_step = np.zeros((n_steps, len(bounds)))  # cumulative counts per step's histogram
    for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
        if t1 <= since or t1 <= t0:
            continue
        delta = np.maximum(np.asarray(c1) - np.asarray(c0), 0.0)
        first = max(0, int((max(t0, since) - since) // step_s))
        last = min(n_steps - 1, int((min(t1, until) - since) // step_s))
        for i in range(first, last + 1):
            lo, hi = since + i * step_s, since + (i + 1) * step_s
            overlap = min(hi, t1) - max(lo, t0)
            if overlap > 0:
                per_step[i] += delta * (overlap / (t1 - t0))
    covered_since = max(since, samples[0][0]) if samples else None
    points = []
    for i in range(n_steps):
        lo = since + i * step_s
        seconds = _covered(lo, min(lo + step_s, now), covered_since)
        points.append({"t": lo, **_figures(bounds, per_step[i], seconds)})
    seconds = _covered(since, now, covered_since)
    return {
        "window_s": n_steps * step_s,
        "step_s": step_s,
        "since": since,
        "until": until,
        "now": now,
        "covered_since": covered_since,
        **_figures(bounds, per_step.sum(axis=0), seconds),
        "points": points,
    }


def _covered(start: float, end: float, covered_since: float | None) -> float:
    """Seconds of [start, end] the samples cover."""
    if covered_since is None:
        return 0.0
    return max(0.0, end - max(start, covered_since))


def _figures(bounds: Sequence[float], counts: np.ndarray, seconds: float) -> dict[str, Any]:
    count = float(counts[-1]) if len(counts) else 0.0
    out: dict[str, Any] = {
        "count": round(count, 2),
        "rate_per_s": round(count / seconds, 3) if seconds > 0 else None,
    }
    for name, q in QUANTILES:
        out[name] = _ms(quantile(bounds, list(counts), q)) if count > 0 else None
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def latency_summary(now: float | None = None) -> dict[str, Any]:
    """The admin status's latency_ms: the last WINDOW_S of every worker's searches."""
    now = time.time() if now is None else now
    bounds, counts = search_buckets()
    samples = take_sample(now=now, counts=counts)
    if not samples or samples[-1][0] != now:
        samples = [*samples, (now, counts)]  # the counts now end the chart
    source = "all workers" if multiprocess_dir() is not None else "this process"
    return summary(bounds, samples, now, source=source)


def summary(
    bounds: Sequence[float],
    samples: Sequence[Sample],
    now: float,
    window_s: float = WINDOW_S,
    source: str = "this process",
) -> dict[str, Any]:
    """series() with its title, whose searches they are, and the PromQL of the histogram."""
    minutes = window_s / 60
    out = series(bounds, samples, now, window_s)
    return {
        "title": f"Search latency, last {minutes:g} minute{'s' if minutes != 1 else ''} ({source})",
        "source": source,
        "metric": QUERY,
        "window": f"last {minutes:g} min",
        "samples": len(samples),
        **out,
        "count": int(round(out["count"])),
    }


class _Sampler:
    """This process's sampler thread (one per process, started by the first app): the ring
    gets a sample every SAMPLE_EVERY_S while the server runs, admin page open or not."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()  # a forked child starts its own: threads do not fork
            # The first sample now, before this app serves: the first worker's is the start
            # the chart counts from (a sample taken later would hide the searches before it).
            try:
                take_sample()
            except Exception as exc:  # the chart may go without: never the app
                log.warning("sampling the search latency histogram failed: %s", exc)
            Poller(
                "latency samples",
                take_sample,
                SAMPLE_EVERY_S,
                failed="sampling the search latency histogram failed",
                level=logging.WARNING,
            ).start()


SAMPLER = _Sampler()


def init(app: Flask) -> None:
    """Take a first sample and start this process's sampler (the app is not kept)."""
    SAMPLER.start()
