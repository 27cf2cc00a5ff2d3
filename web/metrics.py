"""Prometheus metrics at /metrics: one set of figures for all the workers of a server.

Under `recsearch serve` (gunicorn) every worker writes its samples to mmap files in a folder
made fresh and private for each server start (web/server.py points PROMETHEUS_MULTIPROC_DIR
at it before a worker imports prometheus_client); a scrape, whichever worker serves it,
merges every worker's files, so counts add up across workers and a replaced worker's counts
stay counted. Under `recsearch serve --dev` and Flask's test client (one process) the same
metrics live in memory.

- Per request: recsearch_http_request_duration_seconds{method, route, status}. route is the
  Flask url rule (`/v1/items/<path:item_id>`), never the raw path, and a method outside
  HTTP's usual set is "other": no client can grow the number of series.
- Per search: recsearch_searches_total{mode} and recsearch_search_stage_seconds{stage, mode}
  from the timings the engine measures anyway (embed, user, retrieve, features, rank).
- Per event request: recsearch_events_total{outcome}: recorded, duplicate, and rejected (the
  events of a refused request body; a body that is not JSON counts as one).
- Per process, as gauges in "live" modes, so that a dead worker's values leave with it
  (gunicorn's child_exit calls mark_process_dead): the index version it serves and that
  version's measured recall, its delta size, its ranking model. See ProcessFacts.
- Global facts, read from SQL at scrape time by StateCollector: items, jobs by kind and
  state, the last finished job's duration per kind, how long an active job has run, and the
  published (CURRENT) index version.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from flask.typing import ResponseReturnValue
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from engine.core.clock import utcnow
from engine.core.errors import NotReady
from engine.runtime import Runtime
from engine.search.response import SearchOut
from engine.store.models import Item, Job
from engine.users.recording import EventReport
from web.auth import require_key
from web.contract import operation
from web.extensions import runtime_of
from web.replica_metrics import ReplicaCollector

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

# Request latency buckets (seconds): fine from 1 ms to 100 ms, where searches fall, because
# the admin page's p50/p95/p99 are interpolated inside them (web/latency.py).
REQUEST_BUCKETS_S = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
STAGE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
STAGES = ("embed", "user", "retrieve", "features", "rank")
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
UNMATCHED = "unmatched"  # no route matched (404, 405): one label value, whatever the path
# A worker republishes its per-process gauges at most this often, from the search path.
FACTS_EVERY_S = 1.0
_STARTED = "recsearch.metrics.started"

REQUEST_SECONDS = Histogram(
    "recsearch_http_request_duration_seconds",
    "HTTP request latency by route (the Flask url rule), method and status",
    ("method", "route", "status"),
    buckets=REQUEST_BUCKETS_S,
)
SEARCHES = Counter("recsearch_searches", "Searches served, by mode", ("mode",))
STAGE_SECONDS = Histogram(
    "recsearch_search_stage_seconds",
    "Time in each stage of a search (embed, user, retrieve, features, rank), by mode",
    ("stage", "mode"),
    buckets=STAGE_BUCKETS_S,
)
EVENTS = Counter(
    "recsearch_events",
    "Events received: recorded, duplicate (event_id seen before), rejected (refused request)",
    ("outcome",),
)
# Per-process facts. "livemax" over an info gauge (1 for the version a worker serves, 0 once
# it moved on) gives 1 for every version some live worker serves: one in steady state, two
# for the index_poll_s that workers take to follow a publish or a rollback.
SERVING_INDEX = Gauge(
    "recsearch_serving_index_info",
    "1 for each index version a live worker serves",
    ("version",),
    multiprocess_mode="livemax",
)
SERVING_MODEL = Gauge(
    "recsearch_serving_model_info",
    "1 for each ranking model version a live worker serves ('prior' before any promotion)",
    ("version",),
    multiprocess_mode="livemax",
)


def is_multiprocess() -> bool:
    """Whether samples go to the shared mmap files (PROMETHEUS_MULTIPROC_DIR was set before
    prometheus_client chose its value class) rather than to this process's memory."""
    return values.ValueClass is not values.MutexValue


class _LazyGauge:
    """A label-less gauge created on first set, so that a worker that has nothing to say yet
    (no search served, no index) writes no sample: a 0 would be taken for a fact by the min
    and max that merge workers' gauges, and by an alert on recall."""

    def __init__(self, name: str, documentation: str, mode: str) -> None:
        self._args = (name, documentation)
        self._mode = mode
        self._gauge: Gauge | None = None
        self._lock = threading.Lock()

    def set(self, value: float) -> None:
        if self._gauge is None:
            with self._lock:
                if self._gauge is None:
                    self._gauge = Gauge(*self._args, multiprocess_mode=self._mode)  # type: ignore[arg-type]
        self._gauge.set(value)


# "livemin": the lowest recall among the versions live workers serve, the figure an alert
# should see (the same on every worker once they follow CURRENT).
SERVING_RECALL = _LazyGauge(
    "recsearch_serving_index_recall_at_10",
    "Measured recall@10 (from the manifest) of the index version live workers serve; lowest",
    "livemin",
)
# "livemax": every worker follows the same SQL into its own delta and they agree within
# delta_poll_s; the max is the most caught-up worker's count, where a sum would count each
# item once per worker.
DELTA_ITEMS = _LazyGauge(
    "recsearch_delta_items",
    "Items served from the delta (written since the serving version was built); highest",
    "livemax",
)


class ProcessFacts:
    """What this process serves (index version, its recall, delta size, model), published to
    the per-process gauges at most once every FACTS_EVERY_S, from the search path: a worker
    moves to a new version only when a search asks for it (engine LiveIndex)."""

    def __init__(self) -> None:
        self._published_at = -math.inf
        self._index: str | None = None
        self._model: str | None = None
        self._lock = threading.Lock()

    def publish(self, runtime: Runtime, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._published_at < FACTS_EVERY_S:
            return
        with self._lock:
            self._published_at = now
            artifact = runtime.live.get_or_none()
            if artifact is not None:
                self._index = _switch(SERVING_INDEX, self._index, artifact.version)
                recall = artifact.manifest.get("recall_at_10")
                if isinstance(recall, int | float):
                    SERVING_RECALL.set(float(recall))
                snapshot = runtime.delta.snapshot(artifact)
                DELTA_ITEMS.set(snapshot.size if snapshot is not None else 0)
            self._model = _switch(SERVING_MODEL, self._model, runtime.model.get().version)


def _switch(info: Gauge, old: str | None, new: str) -> str:
    if old != new:
        if old is not None:
            # In multiprocess mode a label set cannot be removed from the mmap file: it is
            # set to 0 ("no longer served here") instead.
            info.labels(old).set(0)
        info.labels(new).set(1)
    return new


FACTS = ProcessFacts()  # one per process, like the gauges it writes

# Label children by label values: .labels() validates and locks on every call; a dict lookup
# does not. The keys are bounded (methods, url rules, status codes; modes; stages).
_request_children: dict[tuple[str, str, int], Any] = {}
_search_children: dict[str, Any] = {}
_stage_children: dict[tuple[str, str], Any] = {}


def init(app: Flask) -> None:
    """Time every request and serve /metrics; call it before any other before_request hook
    is registered, so that the timer runs first and a request refused by one is timed too."""
    app.before_request(_start_timer)
    app.after_request(_observe_request)
    app.register_blueprint(bp)


def _start_timer() -> None:
    request.environ[_STARTED] = time.perf_counter()


def _observe_request(response: Response) -> Response:
    started = request.environ.get(_STARTED)
    if started is not None:
        rule = request.url_rule
        key = (request.method, rule.rule if rule is not None else UNMATCHED, response.status_code)
        child = _request_children.get(key)
        if child is None:
            method = key[0] if key[0] in METHODS else "other"
            child = _request_children[key] = REQUEST_SECONDS.labels(method, key[1], str(key[2]))
        child.observe(time.perf_counter() - started)
    return response


def observe_search(runtime: Runtime, response: SearchOut) -> None:
    """Count a search by mode, its stages' times, and refresh this process's serving facts."""
    mode = response.mode
    searches = _search_children.get(mode)
    if searches is None:
        searches = _search_children[mode] = SEARCHES.labels(mode)
    searches.inc()
    for stage, ms in response.stages_ms.items():
        stage_child = _stage_children.get((stage, mode))
        if stage_child is None:
            if stage not in STAGES:
                continue
            stage_child = _stage_children[(stage, mode)] = STAGE_SECONDS.labels(stage, mode)
        stage_child.observe(ms / 1000.0)
    FACTS.publish(runtime)


def observe_events(report: EventReport) -> None:
    EVENTS.labels("recorded").inc(report.recorded)
    EVENTS.labels("duplicate").inc(report.duplicates)


def observe_rejected_events(payload: object) -> None:
    """Count the events of a refused request: each of a batch, or one for any other body."""
    count = 1
    if isinstance(payload, dict) and isinstance(payload.get("events"), list):
        count = max(1, len(payload["events"]))
    EVENTS.labels("rejected").inc(count)


class _ThisProcess:
    """The default registry (this process's metrics, and its process_* and python_* facts)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class StateCollector:
    """Facts every worker would agree on, read from SQL and the index store at scrape time
    (so they need no per-process gauge): a few small queries per scrape."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "recsearch_state_up", "1 when the SQL facts below could be read on this scrape"
        )
        try:
            families = list(self._from_sql())
        except SQLAlchemyError as exc:  # the scrape still answers with the per-process metrics
            log.warning("metrics: reading the jobs and items from SQL failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        try:
            published = self.runtime.live.store.current_version()
        except NotReady:  # CURRENT names a missing version: say nothing, readyz reports it
            published = None
        if published is not None:
            info = GaugeMetricFamily(
                "recsearch_index_published_info",
                "1 for the index version CURRENT names (what workers move to)",
                labels=["version"],
            )
            info.add_metric([published], 1)
            yield info

    def _from_sql(self) -> Iterator[Metric]:
        now = utcnow()
        items = GaugeMetricFamily("recsearch_items", "Items in the catalog (SQL)")
        jobs = GaugeMetricFamily(
            "recsearch_jobs", "Jobs by kind and state (SQL)", labels=["kind", "state"]
        )
        last = GaugeMetricFamily(
            "recsearch_job_last_duration_seconds",
            "Duration of the last finished job of each kind, labelled with how it ended",
            labels=["kind", "state"],
        )
        finished = GaugeMetricFamily(
            "recsearch_job_last_finished_timestamp_seconds",
            "When the last finished job of each kind ended (Unix time)",
            labels=["kind", "state"],
        )
        active = GaugeMetricFamily(
            "recsearch_job_active_seconds",
            "How long the queued or running job of each kind has been so (one at a time)",
            labels=["kind", "state"],
        )
        with self.runtime.session() as session:
            items.add_metric([], int(session.scalar(select(func.count()).select_from(Item)) or 0))
            counts = session.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            )
            for kind, state, count in counts:
                jobs.add_metric([kind, state], count)
            latest = (
                select(Job.kind, func.max(Job.finished_at).label("at"))
                .where(Job.finished_at.is_not(None))
                .group_by(Job.kind)
                .subquery()
            )
            last_jobs = session.scalars(
                select(Job).join(
                    latest, (Job.kind == latest.c.kind) & (Job.finished_at == latest.c.at)
                )
            )
            seen: set[str] = set()
            for job in last_jobs:  # two finishing in the same microsecond: keep one
                if job.finished_at is None or job.kind in seen:
                    continue
                seen.add(job.kind)
                began = job.started_at or job.created_at
                last.add_metric([job.kind, job.state], _seconds(job.finished_at - began))
                finished.add_metric([job.kind, job.state], _unix(job.finished_at))
            for job in session.scalars(select(Job).where(Job.state.in_(("queued", "running")))):
                since = job.started_at if job.state == "running" and job.started_at else None
                began = since or job.created_at
                active.add_metric([job.kind, job.state], _seconds(now - began))
        yield from (items, jobs, last, finished, active)


def _seconds(delta: Any) -> float:
    return max(0.0, float(delta.total_seconds()))


def _unix(naive_utc: datetime) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()


def exposition(runtime: Runtime) -> bytes:
    """The text exposition of every worker's metrics and the global facts."""
    registry = CollectorRegistry(auto_describe=False)
    if is_multiprocess():
        MultiProcessCollector(registry)  # reads PROMETHEUS_MULTIPROC_DIR, as it was written
    else:
        registry.register(_ThisProcess())  # type: ignore[arg-type]
    registry.register(StateCollector(runtime))  # type: ignore[arg-type]
    registry.register(ReplicaCollector(runtime))  # type: ignore[arg-type]
    return generate_latest(registry)


@bp.get("/metrics")
@operation(
    summary="Prometheus metrics, every worker's added up (text exposition format)",
    tag="metrics",
    access="key-or-open",
    responses={200: "text/plain"},
    description="Open without a key when served on loopback (RECSEARCH_OPEN_ENDPOINTS: `metrics`).",
)
def metrics() -> ResponseReturnValue:
    require_key("metrics")
    return Response(exposition(runtime_of(current_app)), content_type=CONTENT_TYPE_LATEST)
