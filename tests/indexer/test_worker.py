"""Jobs in their own workers (RECSEARCH_JOBS=worker, `recsearch worker`): servers only queue;
workers claim each queued job once (FOR UPDATE SKIP LOCKED and the job's lease), run builds
and trainings with progress, honour a cancel from any process, hand a job back when asked to
stop, and retry once a job whose worker was killed; a job is never left stuck.

The kill trials use real `recsearch worker` processes and SIGKILL/SIGTERM; the rest run
workers on threads, each with a Runtime (engine, pool, runner) of its own, as processes
would, meeting only in the database.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.core.clock import utcnow
from engine.core.config import Settings
from engine.encoder.embedder import Embedder
from engine.index.artifact import IndexStore
from engine.runtime import Runtime
from engine.store.models import Job
from indexer.events import load_events
from indexer.ingest import ingest
from indexer.jobs import JobRunner
from indexer.schemas import Job as JobOut
from indexer.worker import Worker
from tests.conftest import ROOT, SAMPLE_CATALOG
from tests.serving import WorkerProcess
from web import create_app


@pytest.fixture
def queued(settings: Settings, embedder: Embedder) -> Iterator[Runtime]:
    """A server's runtime that only queues jobs, the sample catalog ingested, no index yet."""
    runtime = Runtime(settings.replace(jobs="worker"), embedder=embedder)
    with runtime.write_session() as session:
        ingest(runtime, session, SAMPLE_CATALOG)
    yield runtime
    runtime.close()


def until(check: Callable[[], Any], what: str, timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def test_a_server_only_queues_and_a_worker_runs_builds_and_trainings(
    queued: Runtime, embedder: Embedder
) -> None:
    if queued.settings.db_url.startswith("sqlite"):
        pytest.skip("runs on PostgreSQL, a fleet's store; the cancel test covers SQLite's lease")
    app = create_app(runtime=queued)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {app.config['RECSEARCH_API_KEY']}"
    with queued.write_session() as session:
        load_events(queued, session, ROOT / "data" / "events.jsonl")
    first = client.post("/admin/api/rebuild").get_json()
    time.sleep(1.0)
    runner = JobRunner(queued)
    assert runner.get(first["id"]).state == "queued"  # no server thread took it
    worker = Worker(Runtime(queued.settings, embedder=embedder))
    assert worker.run(once=True) == 1
    worker.runtime.close()
    built = runner.get(first["id"])
    assert built.state == "succeeded" and built.attempts == 1 and built.worker is not None
    assert built.phase == "publish" and built.done == built.total == 1
    assert client.get("/v1/search?q=beach").get_json()["index_version"] == "v000001"

    # A training and a build queued together; two workers, each its own runtime, claim side
    # by side: each job runs exactly once.
    build_job = client.post("/admin/api/rebuild").get_json()
    train_job = client.post("/admin/api/train", json={"source": "events"}).get_json()
    workers = [Worker(Runtime(queued.settings, embedder=embedder)) for _ in range(2)]
    ran: list[int] = []
    threads = [threading.Thread(target=lambda w=w: ran.append(w.run(once=True))) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    for worker in workers:
        worker.runtime.close()
    assert sorted(ran) in ([0, 2], [1, 1])
    build_done, train_done = runner.get(build_job["id"]), runner.get(train_job["id"])
    for done in (build_done, train_done):
        assert done.state == "succeeded", done.error
        assert done.attempts == 1 and done.worker is not None and done.error is None
    assert build_done.result is not None
    assert build_done.result["version"] == IndexStore(queued.settings.index_dir).current_version()
    assert train_done.result is not None and train_done.result["examples"] > 0
    assert client.get("/v1/search?q=beach").get_json()["index_version"] == "v000002"


def test_a_cancel_from_another_server_stops_a_running_build(
    queued: Runtime, embedder: Embedder
) -> None:
    slow = queued.settings.replace(embed_batch_size=2)  # a build of many progress reports
    worker = Worker(Runtime(slow, embedder=embedder))
    job = JobRunner(queued).start("build")
    thread = threading.Thread(target=worker.run, kwargs={"once": True})
    thread.start()
    try:
        other_server = Runtime(queued.settings, embedder=embedder)
        elsewhere = JobRunner(other_server)
        until(lambda: elsewhere.get(job.id).phase == "embed", "the build to embed")
        asked = elsewhere.cancel(job.id)
        assert asked.cancel_requested and asked.state == "running"
        done = elsewhere.wait(job.id, 30)
        assert done.state == "cancelled" and done.finished_at is not None
        other_server.close()
    finally:
        worker.stop()
        thread.join(60)
        worker.runtime.close()
    assert IndexStore(queued.settings.index_dir).current_version() is None  # nothing published


def test_a_job_lost_twice_fails_with_the_reason_and_a_queued_one_waits(queued: Runtime) -> None:
    """The second loss ends the job: failed, naming the lost process, never stuck running.
    (Its first loss and retry are the real SIGKILL trial below.)"""
    with queued.write_session() as session:
        lost = Job(kind="build", state="running", params={}, done=10, total=100)
        lost.created_at = lost.heartbeat_at = lost.started_at = utcnow()
        lost.attempts, lost.worker, lost.cancel_requested = 2, "gone-host:4242", False
        waiting = Job(kind="train", state="queued", params={}, done=0, total=0)
        waiting.created_at = waiting.heartbeat_at = utcnow()
        waiting.attempts, waiting.cancel_requested = 0, False
        session.add_all([lost, waiting])
        session.flush()
        lost_id, waiting_id = lost.id, waiting.id
    runner = JobRunner(queued)  # a worker-mode server starting: it settles, never runs
    assert runner.recover_orphans() == 1
    failed = runner.get(lost_id)
    assert failed.state == "failed" and failed.finished_at is not None
    assert failed.error is not None and "gone-host:4242" in failed.error
    assert "attempt 2" in failed.error and "not retried again" in failed.error
    assert runner.get(waiting_id).state == "queued"  # a worker will take it, however late


def test_workers_hand_back_on_sigterm_and_retry_once_after_sigkill(
    queued: Runtime, tmp_path: Path
) -> None:
    """One build through three real workers: the first is SIGTERM'd mid-build and hands it
    back (no attempt counted), the second is SIGKILLed mid-build, the third retries it to
    success. Every worker would have taken the job: each started only when the last ended."""
    settings = queued.settings
    if settings.db_url.startswith("sqlite"):
        pytest.skip("the process trial runs on PostgreSQL, a fleet's store (a minute of CI)")
    env = dict(
        os.environ,
        RECSEARCH_DATA_DIR=str(settings.data_dir),
        RECSEARCH_DATABASE_URL=settings.db_url,
        RECSEARCH_JOBS="worker",
        RECSEARCH_EMBED_BATCH_SIZE="2",  # many progress reports: a kill lands mid-build
        RECSEARCH_ENCODER_THREADS="1",
    )
    runner = JobRunner(queued)
    job = runner.start("build")
    started: list[WorkerProcess] = []

    def embedding_on(worker: WorkerProcess) -> JobOut:
        def check() -> JobOut | None:
            assert worker.process.poll() is None, worker.log.read_text()
            now = runner.get(job.id)
            mine = now.worker is not None and now.worker.endswith(worker.name_fragment)
            return now if mine and now.phase == "embed" and now.done > 0 else None

        return until(check, "the worker to embed", timeout_s=180)  # type: ignore[no-any-return]

    try:
        first = WorkerProcess(env, tmp_path / "first.log")
        started.append(first)
        assert embedding_on(first).attempts == 1
        os.kill(first.process.pid, signal.SIGTERM)
        assert first.wait(60) == 0, first.log.read_text()
        handed = runner.get(job.id)
        assert handed.state == "queued" and handed.attempts == 0 and handed.worker is None
        assert "handed back" in first.log.read_text()

        second = WorkerProcess(env, tmp_path / "second.log")
        started.append(second)
        assert embedding_on(second).attempts == 1
        second.kill()
        assert runner.get(job.id).state == "running"  # until a worker sees the lease free

        third = WorkerProcess(env, tmp_path / "third.log")
        started.append(third)
        done = runner.wait(job.id, 300)
        assert done.state == "succeeded", (done.error, third.log.read_text())
        assert done.attempts == 2 and done.worker is not None
        assert done.worker.endswith(third.name_fragment)
        log = third.log.read_text()
        assert "settled 1 job(s)" in log and "attempt 2" in log
        assert done.result is not None
        assert done.result["version"] == IndexStore(settings.index_dir).current_version()
        os.kill(third.process.pid, signal.SIGTERM)  # idle: exits at once
        assert third.wait(30) == 0
    finally:
        for worker in started:
            worker.kill()
