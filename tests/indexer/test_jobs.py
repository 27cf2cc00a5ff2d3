"""Jobs: one shape for every job (runtime, session, ..., progress), the caller owning the
transaction; one active job per kind enforced by the database; job ids in range; one-line
logs for expected failures and a traceback for bugs."""

from __future__ import annotations

import inspect
import logging
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from engine.catalog.items import ItemIn, upsert_items
from engine.core.clock import utcnow
from engine.core.config import Settings
from engine.core.errors import Conflict, NotFound
from engine.encoder.embedder import Embedder
from engine.runtime import Runtime
from engine.store.db import _alembic_config, head_revision, make_engine, upgrade
from engine.store.models import Event, Item, Job
from indexer.build import build
from indexer.events import load_events
from indexer.ingest import ingest
from indexer.jobs import JobRunner
from indexer.progress import Progress
from indexer.schemas import Job as JobOut
from indexer.train import train_from_events, train_from_impressions, train_from_judgments
from tests.conftest import SAMPLE_CATALOG, all_at_once, write_jsonl

JOBS = [ingest, load_events, build, train_from_judgments, train_from_impressions, train_from_events]


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j.__name__)
def test_every_job_takes_runtime_session_and_progress(job: Any) -> None:
    parameters = inspect.signature(job).parameters
    assert list(parameters)[:2] == ["runtime", "session"]
    assert parameters["progress"].kind is inspect.Parameter.KEYWORD_ONLY


def count(runtime: Runtime, model: Any) -> int:
    with runtime.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_caller_that_rolls_back_keeps_nothing(runtime: Runtime, tmp_path: Path) -> None:
    events = write_jsonl(
        tmp_path / "e.jsonl", [{"user_id": "u", "item_id": "kyoto-japan", "type": "click"}]
    )
    with runtime.sessions() as session:
        assert ingest(runtime, session, SAMPLE_CATALOG).accepted
        assert load_events(runtime, session, events).accepted
        session.rollback()
    assert count(runtime, Item) == 0 and count(runtime, Event) == 0
    with runtime.write_session() as session:
        ingest(runtime, session, SAMPLE_CATALOG)
        load_events(runtime, session, events)
    assert count(runtime, Item) == 325 and count(runtime, Event) == 1


def test_a_rejected_file_undoes_only_its_own_writes(runtime: Runtime, tmp_path: Path) -> None:
    bad_catalog = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "title": "A"}, {"id": "b"}])
    bad_events = write_jsonl(
        tmp_path / "e.jsonl",
        [
            {"user_id": "u", "item_id": "mine", "type": "click"},
            {"user_id": "u", "item_id": "nowhere", "type": "click"},
        ],
    )
    with runtime.write_session() as session:
        upsert_items(session, [ItemIn(id="mine", title="The caller's own write")])
        assert not ingest(runtime, session, bad_catalog).accepted
        assert not load_events(runtime, session, bad_events).accepted
        assert session.get(Item, "mine") is not None  # the transaction is still usable
    with runtime.session() as session:
        assert [i for i in session.scalars(select(Item.id))] == ["mine"]
    assert count(runtime, Event) == 0


class HeldRunner(JobRunner):
    """A runner whose jobs wait for the test to release them, so they stay active."""

    def __init__(self, runtime: Runtime, release: threading.Event) -> None:
        super().__init__(runtime)
        self.release = release

    def _execute(self, kind: str, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
        assert self.release.wait(30)
        return {}


def test_simultaneous_starts_in_two_servers_start_one_job(
    settings: Settings, embedder: Embedder
) -> None:
    # Two runtimes are two server processes: their own engines, pools and runners.
    servers = [Runtime(settings, embedder=embedder) for _ in range(2)]
    release = threading.Event()
    runners = [HeldRunner(rt, release) for rt in servers]
    try:
        for _ in range(6):
            release.clear()
            outcomes = all_at_once([partial(r.start, "build") for r in runners])
            started = [o for o in outcomes if isinstance(o, JobOut)]
            refused = [o for o in outcomes if not isinstance(o, JobOut)]
            assert len(started) == 1, outcomes
            assert len(refused) == 1 and isinstance(refused[0], Conflict), outcomes
            assert "already" in str(refused[0])
            job_id = started[0].id
            owner = next(r for r in runners if job_id in r._threads)
            release.set()
            assert owner.wait(job_id, 30).state == "succeeded"
        with servers[0].session() as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 6
    finally:
        release.set()
        for rt in servers:
            rt.close()


def test_the_database_refuses_a_second_active_job_of_a_kind(runtime: Runtime) -> None:
    def add(kind: str, state: str) -> None:
        with runtime.write_session() as session:
            job = Job(kind=kind, state=state, params={}, done=0, total=0, created_at=utcnow())
            session.add(job)

    add("build", "running")
    add("build", "failed")  # finished jobs do not count
    add("train", "queued")  # nor do other kinds
    with pytest.raises(IntegrityError, match="(?i)unique"):
        add("build", "queued")


def test_the_migration_keeps_one_active_job_per_kind(db_url: str) -> None:
    engine = make_engine(Settings(database_url=db_url))
    try:
        with engine.begin() as connection:
            command.upgrade(_alembic_config(connection), "0005")
            for state in ("running", "queued", "succeeded"):
                connection.execute(
                    text(
                        "INSERT INTO jobs (kind, state, params, done, total, created_at) "
                        "VALUES ('build', :state, '{}', 0, 0, :now)"
                    ),
                    {"state": state, "now": utcnow()},
                )
        assert upgrade(engine)[1] == head_revision()
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT id, state, error FROM jobs ORDER BY id")).all()
        assert [r.state for r in rows] == ["running", "failed", "succeeded"]
        assert "another build job was active" in rows[1].error
    finally:
        engine.dispose()


@pytest.mark.parametrize("job_id", ["99999999999999999999999", str(2**63), "0"])
def test_job_ids_outside_the_id_range_are_not_found(client: Any, job_id: str) -> None:
    for response in (
        client.get(f"/admin/api/jobs/{job_id}"),
        client.post(f"/admin/api/jobs/{job_id}/cancel"),
    ):
        assert response.status_code == 404, response.get_json()
        assert response.get_json()["message"] == f"job {job_id}"


def test_job_runner_range_checks_ids(runtime: Runtime) -> None:
    runner = JobRunner(runtime)
    for job_id in (-1, 0, 2**63, 10**30):
        with pytest.raises(NotFound, match=f"job {job_id}"):
            runner.get(job_id)
        with pytest.raises(NotFound):
            runner.cancel(job_id)
    with pytest.raises(NotFound):
        runner.get(2**63 - 1)  # in range, just absent


def test_an_expected_job_failure_logs_one_line(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    runner = JobRunner(runtime)
    with caplog.at_level(logging.INFO, logger="indexer.jobs"):
        job = runner.wait(runner.start("train", {"source": "impressions"}).id, 60)
    assert job.state == "failed" and "no logged impressions" in job.error
    records = [r for r in caplog.records if r.name == "indexer.jobs" and r.levelno >= logging.ERROR]
    assert len(records) == 1
    assert records[0].exc_info is None and "\n" not in records[0].getMessage()
    assert job.error in records[0].getMessage() and f"job {job.id}" in records[0].getMessage()


def test_an_unexpected_job_failure_keeps_its_traceback(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    class Crashing(JobRunner):
        def _execute(self, kind: str, params: dict[str, Any], progress: Progress) -> dict[str, Any]:
            raise ZeroDivisionError("a bug")

    runner = Crashing(runtime)
    with caplog.at_level(logging.INFO, logger="indexer.jobs"):
        job = runner.wait(runner.start("build").id, 60)
    assert job.state == "failed" and job.error == "a bug"
    records = [r for r in caplog.records if r.name == "indexer.jobs" and r.levelno >= logging.ERROR]
    assert len(records) == 1 and records[0].exc_info is not None
