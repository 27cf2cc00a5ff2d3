"""/metrics: the exposition parses, every counter moves by exactly what a test did, the key
rule is search's, and two gunicorn workers' counts add up; the admin page's latency figures
come from the same histogram."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from engine.index.artifact import IndexStore
from engine.runtime import Runtime
from tests.serving import built_env
from web import create_app, metrics
from web.latency import quantile, search_buckets
from web.metrics import REQUEST_BUCKETS_S, ProcessFacts

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and labels (parsing is the test of the format)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = sample.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name` over the samples that carry `labels` (others free)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def scrape(client: Any) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


@pytest.fixture
def fresh_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's serving facts start unpublished (another test's runtime published last)."""
    monkeypatch.setattr(metrics, "FACTS", ProcessFacts())


def test_searches_count_by_mode_with_their_stages_and_requests(
    client: Any, built: Runtime, fresh_facts: None
) -> None:
    before = scrape(client)
    for q in ("beach", "old town", "mountain lakes"):
        assert client.get(f"/v1/search?q={q}&k=3").status_code == 200
    assert client.post("/v1/search", json={"context_items": ["paris-france"]}).status_code == 200
    assert client.post("/v1/search", json={"k": 2}).status_code == 200
    assert client.get("/v1/search?k=0").status_code == 422
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("recsearch_searches_total", mode="search") == 3
    assert moved("recsearch_searches_total", mode="recommend") == 1
    assert moved("recsearch_searches_total", mode="popular") == 1
    for stage in ("embed", "user", "retrieve", "features", "rank"):
        assert moved("recsearch_search_stage_seconds_count", stage=stage, mode="search") == 3
        assert moved("recsearch_search_stage_seconds_count", stage=stage, mode="popular") == 1
    assert moved("recsearch_search_stage_seconds_sum", stage="embed", mode="search") > 0
    request = "recsearch_http_request_duration_seconds_count"
    assert moved(request, route="/v1/search", method="GET", status="200") == 3
    assert moved(request, route="/v1/search", method="POST", status="200") == 2
    assert moved(request, route="/v1/search", method="GET", status="422") == 1
    # The scrape before this one was timed too, under its rule, not its path.
    assert moved(request, route="/metrics", method="GET", status="200") == 1

    # This process's serving facts, published by the first search.
    version = IndexStore(built.settings.index_dir).current_version()
    assert version is not None
    assert total(after, "recsearch_serving_index_info", version=version) == 1
    recall = IndexStore(built.settings.index_dir).manifest(version)["recall_at_10"]
    assert total(after, "recsearch_serving_index_recall_at_10") == pytest.approx(recall)
    assert total(after, "recsearch_serving_model_info", version="prior") == 1
    assert ("recsearch_delta_items", frozenset()) in after
    assert total(after, "recsearch_index_published_info", version=version) == 1
    assert total(after, "recsearch_items") == 325


def test_routes_not_paths_and_bounded_methods(client: Any, built: Runtime) -> None:
    before = scrape(client)
    for item_id in ("paris-france", "london-united-kingdom", "no-such-item"):
        client.get(f"/v1/items/{item_id}")
    client.get("/no/such/path/1")
    client.get("/no/such/path/2")
    client.open("/healthz", method="PROPFIND")
    client.open("/healthz", method="BREW")
    after = scrape(client)
    request = "recsearch_http_request_duration_seconds_count"
    routes = {dict(ls).get("route") for (n, ls) in after if n == request}
    assert "/v1/items/<path:item_id>" in routes
    assert not any(r and "paris-france" in r for r in routes)
    rule = "/v1/items/<path:item_id>"

    def moved(**labels: str) -> float:
        return total(after, request, **labels) - total(before, request, **labels)

    assert moved(route=rule, status="200") == 2 and moved(route=rule, status="404") == 1
    assert moved(route="unmatched") == 4  # two unknown paths, two unknown methods (405s)
    methods = {dict(ls).get("method") for (n, ls) in after if n == request}
    assert "other" in methods and not methods & {"PROPFIND", "BREW"}


def test_events_recorded_duplicate_and_rejected(client: Any, built: Runtime) -> None:
    before = scrape(client)
    batch = {
        "events": [
            {"user_id": "m1", "item_id": "paris-france", "type": "click", "event_id": "m-1"},
            {"user_id": "m1", "item_id": "london-united-kingdom", "type": "view"},
        ]
    }
    assert client.post("/v1/events", json=batch).get_json()["recorded"] == 2
    again = {"user_id": "m1", "item_id": "paris-france", "type": "click", "event_id": "m-1"}
    assert client.post("/v1/events", json=again).get_json()["duplicates"] == 1
    unknown = {"events": [{"user_id": "m2", "item_id": "nowhere", "type": "click"}] * 3}
    assert client.post("/v1/events", json=unknown).status_code == 422
    malformed = client.post("/v1/events", data=b"{", content_type="application/json")
    assert malformed.status_code == 400
    after = scrape(client)

    def moved(outcome: str) -> float:
        name = "recsearch_events_total"
        return total(after, name, outcome=outcome) - total(before, name, outcome=outcome)

    assert (moved("recorded"), moved("duplicate"), moved("rejected")) == (2, 1, 4)


def test_job_states_and_durations_from_sql(client: Any, built: Runtime) -> None:
    job = client.post("/admin/api/rebuild").get_json()
    runner = client.application.extensions["recsearch_jobs"]
    assert runner.wait(job["id"], timeout_s=120).state == "succeeded"
    after = scrape(client)
    assert total(after, "recsearch_jobs", kind="build", state="succeeded") == 1
    assert total(after, "recsearch_jobs", kind="build", state="running") == 0
    duration = total(after, "recsearch_job_last_duration_seconds", kind="build", state="succeeded")
    assert 0 < duration < 120
    finished = total(after, "recsearch_job_last_finished_timestamp_seconds", kind="build")
    assert abs(finished - time.time()) < 120
    assert total(after, "recsearch_state_up") == 1


def test_metrics_open_on_loopback_and_keyed_otherwise(app: Any, built: Runtime) -> None:
    stranger = app.test_client()  # app: served beyond loopback (create_app's default)
    assert stranger.get("/metrics").status_code == 401
    key = {"Authorization": f"Bearer {app.config['RECSEARCH_API_KEY']}"}
    assert stranger.get("/metrics", headers=key).status_code == 200
    assert stranger.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    local = create_app(runtime=built, loopback=True).test_client()
    assert local.get("/metrics").status_code == 200
    # RECSEARCH_OPEN_ENDPOINTS names it like search and events.
    opened = create_app(runtime=Runtime(built.settings.replace(open_endpoints="metrics")))
    try:
        assert opened.test_client().get("/metrics").status_code == 200
        assert opened.test_client().get("/v1/search?q=x").status_code == 401
    finally:
        opened.extensions["recsearch"].close()


def test_quantiles_fall_in_the_bucket_of_the_true_ones() -> None:
    rng = np.random.default_rng(7)
    latencies_s = rng.lognormal(np.log(0.02), 0.8, 2_000)
    histogram = Histogram("q", "q", buckets=REQUEST_BUCKETS_S, registry=CollectorRegistry())
    for value in latencies_s:
        histogram.observe(float(value))
    (family,) = histogram.collect()
    buckets = [s for s in family.samples if s.name.endswith("_bucket")]
    bounds = [float(s.labels["le"]) for s in buckets]
    cumulative = [s.value for s in buckets]
    edges = [0.0, *bounds]
    for q in (0.5, 0.95, 0.99):
        estimate = quantile(bounds, cumulative, q)
        assert estimate is not None
        true = float(np.quantile(latencies_s, q))
        i = int(np.searchsorted(bounds, true))  # the bucket the true quantile lies in
        assert edges[i] <= estimate <= edges[i + 1], (q, estimate, true)
    assert quantile(bounds, [0.0] * len(bounds), 0.5) is None
    assert quantile([0.1, float("inf")], [0, 5], 0.5) == 0.1  # all above the last bound


def test_admin_status_reads_the_histogram(client: Any, built: Runtime) -> None:
    bounds, before = search_buckets()
    for _ in range(3):
        assert client.get("/v1/search?q=beach").status_code == 200
    assert client.get("/admin/api/search?q=beach").status_code == 200
    bounds, after = search_buckets()
    assert after[-1] - before[-1] == 4  # the API's and the playground's searches
    latency = client.get("/admin/api/status").get_json()["latency_ms"]
    assert latency["source"] == "this process" and "recsearch_http_request" in latency["metric"]
    assert latency["count"] >= 4 and 0 < latency["p50"] <= latency["p95"] <= latency["p99"]


def test_each_server_start_gets_a_fresh_private_metrics_dir(tmp_path: Path) -> None:
    import socket

    from web.server import fresh_metrics_dir

    host = socket.gethostname()
    parent = tmp_path / "var" / "metrics"
    parent.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = parent / f"{host}:{dead.pid}-abc"  # a server killed with -9 left it
    running = parent / f"{host}:{os.getppid()}-def"  # another server, still up
    for folder in (left, running):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"")
    first, second = fresh_metrics_dir(parent), fresh_metrics_dir(parent)
    assert first != second and not list(first.iterdir())
    assert first.stat().st_mode & 0o777 == 0o700
    assert not left.exists() and running.exists()


def _get(url: str) -> tuple[int, bytes]:
    """(status, raw body): /metrics is text, not JSON."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _searches_by_worker(folder: Path) -> dict[int, float]:
    """recsearch_searches_total per worker, read from each worker's own counter file."""
    out: dict[int, float] = {}
    for path in folder.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[1] == "recsearch_searches_total":
                out[pid] = out.get(pid, 0.0) + value
    return out


@pytest.fixture
def served(tmp_path: Path, seed_index: Path, one_db_url: str, serve: Any) -> tuple[Path, Any]:
    """(data dir, the server) of `recsearch serve --workers 2` on a built store, ready."""
    data = tmp_path / "var"
    server = serve(built_env(data, seed_index, database_url=one_db_url))
    server.wait_ready()
    return data, server


@pytest.mark.slow
def test_two_gunicorn_workers_add_up(served: tuple[Path, Any]) -> None:
    import socket

    from web.server import metrics_root

    data, server = served
    base = server.base
    # Fresh for this start, private, and never in the data dir (its disk may fill).
    (folder,) = metrics_root().glob(f"{socket.gethostname()}:{server.pid}-*")
    assert not (data / "metrics").exists()
    assert folder.stat().st_mode & 0o077 == 0
    sent = 0
    lock = threading.Lock()

    def search(n: int) -> None:
        nonlocal sent
        for i in range(n):
            status, _ = _get(f"{base}/v1/search?q=beach+{i}&k=3")
            assert status == 200
            with lock:
                sent += 1

    for _ in range(20):  # until both workers have served searches (gunicorn picks which)
        threads = [threading.Thread(target=search, args=(5,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        by_worker = _searches_by_worker(folder)
        if len([n for n in by_worker.values() if n > 0]) >= 2:
            break
    assert len([n for n in by_worker.values() if n > 0]) >= 2, by_worker

    def scraped() -> Samples:
        status, body = _get(f"{base}/metrics")
        assert status == 200
        return parse(body.decode())

    samples = scraped()
    assert total(samples, "recsearch_searches_total", mode="search") == sent
    request = "recsearch_http_request_duration_seconds_count"
    assert total(samples, request, route="/v1/search", status="200") == sent
    assert total(samples, "recsearch_search_stage_seconds_count", stage="embed") == sent
    version = IndexStore(data / "indexes").current_version()
    assert version is not None
    assert total(samples, "recsearch_serving_index_info", version=version) == 1
    assert total(samples, "recsearch_items") == 325

    # A worker killed and replaced: its counts stay, its live gauges go with it.
    victim = max(by_worker, key=lambda pid: by_worker[pid])
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while victim in server.worker_pids() or len(server.worker_pids()) < 2:
        assert time.monotonic() < deadline, "the dead worker was not replaced"
        time.sleep(0.5)
    assert not list(folder.glob(f"gauge_live*_{victim}.db"))
    assert total(scraped(), "recsearch_searches_total", mode="search") == sent

    assert server.stop() == 0  # SIGTERM
    assert not folder.exists()  # removed on exit: the next start begins at zero
