"""The admin API (/admin/api): status, background rebuilds and training, jobs, rollback.
Every route needs the API key."""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from typing import Any

import numpy as np
from flask import Blueprint, Flask, current_app, jsonify, request, session
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import Forbidden

from engine.errors import InvalidInput
from engine.model_store import ModelStore
from indexer.jobs import JobRunner
from web import runtime_of
from web.auth import require_key

bp = Blueprint("admin_api", __name__, url_prefix="/admin/api")
JOBS = "recsearch_jobs"
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


def init(app: Flask) -> None:
    runner = JobRunner(runtime_of(app))
    runner.recover_orphans()  # jobs left "running" by a server that stopped
    app.extensions[JOBS] = runner
    app.extensions[LATENCY] = LatencyLog()
    app.register_blueprint(bp)
    from web import admin_page

    admin_page.init(app)


def jobs() -> JobRunner:
    return current_app.extensions[JOBS]  # type: ignore[no-any-return]


def latency() -> LatencyLog:
    return current_app.extensions[LATENCY]  # type: ignore[no-any-return]


@bp.before_request
def _keyed() -> None:
    """The API key, or the admin page's login session (with its CSRF token on writes)."""
    if session.get("admin"):
        if request.method in ("GET", "HEAD"):
            return
        token = request.headers.get("X-CSRF-Token", "")
        if token and hmac.compare_digest(token, session.get("csrf", "")):
            return
        raise Forbidden("missing or wrong CSRF token")
    require_key()


def _body() -> dict[str, Any]:
    payload = request.get_json(silent=True) if request.data else {}
    if not isinstance(payload, dict):
        raise InvalidInput("the body must be a JSON object")
    return payload


@bp.post("/rebuild")
def rebuild() -> ResponseReturnValue:
    return jsonify(jobs().start("build")), 202


@bp.post("/train")
def train() -> ResponseReturnValue:
    body = _body()
    params = {"source": body.get("source", "impressions"), "promote": bool(body.get("promote"))}
    return jsonify(jobs().start("train", params)), 202


@bp.get("/jobs")
def job_list() -> ResponseReturnValue:
    return jsonify({"jobs": jobs().list()})


@bp.get("/jobs/<int:job_id>")
def job_get(job_id: int) -> ResponseReturnValue:
    return jsonify(jobs().get(job_id))


@bp.post("/jobs/<int:job_id>/cancel")
def job_cancel(job_id: int) -> ResponseReturnValue:
    return jsonify(jobs().cancel(job_id))


@bp.post("/rollback")
def rollback() -> ResponseReturnValue:
    version = _body().get("version")
    if not isinstance(version, str) or not version:
        raise InvalidInput('send {"version": "v000001"}: the index version to serve')
    runtime = runtime_of(current_app)
    runtime.live.store.point_current_at(version)
    return jsonify({"index_version": version})


@bp.post("/promote")
def promote() -> ResponseReturnValue:
    version = _body().get("version")
    if not isinstance(version, str) or not version:
        raise InvalidInput('send {"version": "v000001"}: the model version to make live')
    ModelStore(runtime_of(current_app).settings.model_dir).point_current_at(version)
    return jsonify({"model_version": version})


@bp.get("/search")
def playground_search() -> ResponseReturnValue:
    """The playground's search: the same engine call, with explanations, behind admin auth."""
    from dataclasses import asdict

    from engine.search import SearchRequest

    runtime = runtime_of(current_app)
    raw: dict[str, Any] = dict(request.args)
    raw["explain"] = True
    search_request = SearchRequest.parse(raw, runtime.settings.max_k)
    with runtime.session() as db:
        response = runtime.searcher.search(db, search_request)
    latency().add(response.took_ms)
    return jsonify(
        {
            "results": [asdict(hit) for hit in response.results],
            "index_version": response.index_version,
            "took_ms": response.took_ms,
            "mode": response.mode,
        }
    )


@bp.get("/status")
def status() -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    store = runtime.live.store
    current = store.current_version()
    index: dict[str, Any] | None = None
    if current is not None:
        manifest = store.manifest(current)
        folder = store.root / current
        artifact = runtime.live.get_or_none()
        delta = runtime.delta.snapshot(artifact) if artifact is not None else None
        index = {
            "version": current,
            "items": manifest["item_count"],
            "factory": manifest["index"]["factory"],
            "params": manifest["index"]["params"],
            "size_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
            "built_at": manifest["built_at"],
            "recall_at_10": manifest["recall_at_10"],
            "delta_items": delta.size if delta is not None else 0,
        }
    models = ModelStore(runtime.settings.model_dir)
    live_model = models.current_version()
    return jsonify(
        {
            "index": index,
            "index_versions": store.versions(),
            "models": [
                {"version": v, "live": v == live_model, "report": models.report(v)}
                for v in models.versions()
            ],
            "live_model": live_model or "prior",
            "jobs": jobs().list(limit=10),
            "latency_ms": latency().summary(),
        }
    )
