"""The admin API: background rebuilds and training, one job at a time, cancel, orphans,
rollback, status; and searches that never fail while versions change under them."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from engine.core.clock import utcnow
from engine.index.artifact import IndexStore
from engine.runtime import Runtime
from engine.store.election import leadership_for
from engine.store.models import Job
from indexer.build import build
from indexer.events import load_events
from tests.conftest import ROOT, wait_done
from web import create_app


def test_rebuild_runs_in_the_background_and_publishes(client: Any, built: Runtime) -> None:
    before = IndexStore(built.settings.index_dir).current_version()
    response = client.post("/admin/api/rebuild")
    assert response.status_code == 202 and response.get_json()["state"] == "queued"
    job = wait_done(client, response.get_json()["id"])
    assert job["state"] == "succeeded" and job["error"] is None
    assert job["phase"] == "publish" and job["done"] == job["total"] == 1
    assert job["result"]["version"] != before
    assert job["result"]["version"] == IndexStore(built.settings.index_dir).current_version()
    status = client.get("/admin/api/status").get_json()
    assert status["index"]["version"] == job["result"]["version"]
    assert status["index"]["items"] == 325 and status["index"]["size_bytes"] > 0
    assert status["jobs"][0]["id"] == job["id"] and status["live_model"] == "prior"


def test_one_build_at_a_time_across_processes(client: Any, built: Runtime) -> None:
    # Another server process's running build: no thread of ours, its lease held elsewhere.
    with built.write_session() as session:
        other = Job(kind="build", state="running", params={}, done=0, total=0)
        other.created_at = other.heartbeat_at = utcnow()
        session.add(other)
        session.flush()
        other_id = other.id
    lease = leadership_for(built.db, f"job-{other_id}")
    assert lease.try_acquire()
    try:
        response = client.post("/admin/api/rebuild")
        assert response.status_code == 409
        assert f"job {other_id} (build) is already running" in response.get_json()["message"]
        # Its process reads the request with its next heartbeat.
        asked = client.post(f"/admin/api/jobs/{other_id}/cancel").get_json()
        assert asked["state"] == "running" and asked["cancel_requested"]
    finally:
        lease.release()  # that process is gone now: nothing would ever read the request
    cancelled = client.post(f"/admin/api/jobs/{other_id}/cancel").get_json()
    assert cancelled["state"] == "cancelled"
    assert client.post(f"/admin/api/jobs/{other_id}/cancel").status_code == 409
    assert client.get("/admin/api/jobs/999999").status_code == 404


def test_a_restart_fails_orphaned_jobs(built: Runtime) -> None:
    with built.write_session() as session:
        stale = Job(kind="train", state="running", params={}, done=3, total=10)
        stale.created_at = stale.heartbeat_at = utcnow() - timedelta(hours=1)
        session.add(stale)
        session.flush()
        stale_id = stale.id
    app = create_app(runtime=built)  # a server starting up
    key = {"Authorization": f"Bearer {app.config['RECSEARCH_API_KEY']}"}
    job = app.test_client().get(f"/admin/api/jobs/{stale_id}", headers=key).get_json()
    assert job["state"] == "failed" and "orphaned" in job["error"]


def test_cancel_a_running_build_keeps_the_old_version(client: Any, runtime: Runtime) -> None:
    from indexer.ingest import ingest
    from tests.conftest import SAMPLE_CATALOG

    with runtime.session() as session:
        ingest(runtime, session, SAMPLE_CATALOG)  # no seed to reuse: embedding takes seconds
    job = client.post("/admin/api/rebuild").get_json()
    deadline = time.monotonic() + 60
    while client.get(f"/admin/api/jobs/{job['id']}").get_json()["phase"] != "embed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.post(f"/admin/api/jobs/{job['id']}/cancel")
    assert wait_done(client, job["id"])["state"] == "cancelled"
    assert IndexStore(runtime.settings.index_dir).current_version() is None


def test_train_job_and_promote_and_rollback(client: Any, built: Runtime) -> None:
    with built.write_session() as session:
        load_events(built, session, ROOT / "data" / "events.jsonl")
    job = client.post("/admin/api/train", json={"source": "events", "promote": True}).get_json()
    done = wait_done(client, job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["version"] == "v000001" and done["result"]["examples"] > 0
    status = client.get("/admin/api/status").get_json()
    assert status["live_model"] == "v000001" and status["models"][0]["live"]
    assert client.post("/admin/api/train", json={"source": "mystery"}).status_code == 422
    first = IndexStore(built.settings.index_dir).current_version()
    with built.session() as session:
        second = build(built, session).version
    assert client.get("/v1/search?q=beach").get_json()["index_version"] == second
    assert client.post("/admin/api/rollback", json={"version": first}).status_code == 200
    assert client.get("/v1/search?q=beach").get_json()["index_version"] == first
    assert client.post("/admin/api/rollback", json={"version": "v999999"}).status_code == 404


def test_admin_api_needs_the_key(app: Any) -> None:
    anonymous = app.test_client()
    assert anonymous.get("/admin/api/status").status_code == 401
    assert anonymous.post("/admin/api/rebuild").status_code == 401


def test_searches_never_fail_while_versions_change(client: Any, built: Runtime) -> None:
    """Threads search during a full rebuild and a rollback: zero failures, and the served
    version changes exactly when publish returns (a search that overlaps the rollback may
    see either version)."""
    first = IndexStore(built.settings.index_dir).current_version()
    app = client.application
    log: list[tuple[float, float, int, str | None]] = []
    stop = threading.Event()

    def searcher() -> None:
        local = app.test_client()
        local.environ_base["HTTP_AUTHORIZATION"] = client.environ_base["HTTP_AUTHORIZATION"]
        while not stop.is_set():
            t0 = time.monotonic()
            response = local.get("/v1/search?q=mountain+lakes&k=5")
            body = response.get_json()
            log.append((t0, time.monotonic(), response.status_code, body.get("index_version")))

    marks: dict[str, float] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "publish" and done == 0:
            marks["publish_start"] = time.monotonic()

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    with built.session() as session:
        second = build(built, session, progress=progress).version
    marks["publish_end"] = time.monotonic()
    time.sleep(0.3)
    marks["rollback_start"] = time.monotonic()
    IndexStore(built.settings.index_dir).point_current_at(first)
    marks["rollback_end"] = time.monotonic()
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()

    assert log and all(status == 200 for _, _, status, _ in log)
    for start, end, _, version in log:
        if end < marks["publish_start"]:
            assert version == first
        elif marks["publish_end"] < start and end < marks["rollback_start"]:
            assert version == second
        elif start > marks["rollback_end"]:
            assert version == first
    assert any(v == second for *_, v in log) and log[-1][3] == first


def test_page_login_and_csrf(app: Any, built: Runtime) -> None:
    import re

    browser = app.test_client()
    assert browser.get("/admin/").status_code == 302
    form = browser.get("/admin/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    wrong = browser.post("/admin/login", data={"csrf": csrf, "password": "nope"})
    assert wrong.status_code == 401 and "Wrong key." in wrong.get_data(as_text=True)
    key = app.config["RECSEARCH_API_KEY"]
    assert browser.post("/admin/login", data={"csrf": "forged", "password": key}).status_code == 403
    assert browser.post("/admin/login", data={"csrf": csrf, "password": key}).status_code == 302
    page = browser.get("/admin/").get_data(as_text=True)
    token = re.search(r'name="csrf" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    assert browser.get("/admin/api/status").status_code == 200  # reads need the session only
    refused = browser.post("/admin/api/rollback", json={"version": "v000001"})
    assert refused.status_code == 403 and "CSRF" in refused.get_json()["message"]
    ok = browser.post("/admin/api/search?q=x", headers={"X-CSRF-Token": token})
    assert ok.status_code == 405  # right token, wrong method: past the CSRF check
    played = browser.get("/admin/api/search?q=temples&k=3").get_json()
    assert len(played["results"]) == 3 and "contributions" in played["results"][0]["explanation"]
