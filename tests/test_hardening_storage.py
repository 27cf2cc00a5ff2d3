"""Storage hardening: one active job per kind enforced by the database, concurrent publishes,
version names checked before they touch the filesystem, job ids in range, private data
files, one-line logs for expected job failures, and the shared index status."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
from collections.abc import Callable
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
from engine.core.errors import Conflict, InvalidInput, NotFound, NotReady
from engine.encoder.embedder import Embedder
from engine.index.artifact import IndexStore
from engine.index.versions import CURRENT, VersionStore
from engine.ranking.model_store import ModelStore
from engine.runtime import Runtime
from engine.store.db import _alembic_config, head_revision, make_engine, upgrade
from engine.store.models import Job
from indexer.jobs import JobRunner
from indexer.progress import Progress
from indexer.schemas import Job as JobOut


def _all_at_once(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls on threads released together; their results or exceptions."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[Any] = []

    def run(call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            outcomes.append(call())
        except Exception as exc:  # collected for the caller to check
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcomes


# ---------------------------------------------------------------- 6: one active job per kind


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
            outcomes = _all_at_once([partial(r.start, "build") for r in runners])
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


# ---------------------------------------------------------------- 7: concurrent publishes


def _stage(store: VersionStore, payload: int) -> Path:
    staging = store.stage()
    (staging / store.manifest_name).write_text(json.dumps({"version": None, "n": payload}))
    return staging


def test_publishing_from_several_threads_at_once(tmp_path: Path) -> None:
    for round_ in range(30):
        store = VersionStore(tmp_path / f"round{round_}")
        stagings = [_stage(store, n) for n in range(4)]
        outcomes = _all_at_once([partial(store.publish, s) for s in stagings])
        published = [o for o in outcomes if isinstance(o, str)]
        assert len(published) == len(outcomes), outcomes
        versions = [f"v{n:06d}" for n in range(1, len(stagings) + 1)]
        assert sorted(published) == versions == store.versions()
        # Publishes are serialized: the one that finished last is the newest, and current.
        assert store.current_version() == versions[-1]
        assert all(store.manifest(v)["version"] == v for v in versions)
        leftovers = {p.name for p in store.root.iterdir()} - {CURRENT, ".publish-lock"}
        assert leftovers == set(versions)


def test_a_publish_that_cannot_switch_current_leaves_no_version(tmp_path: Path) -> None:
    class Broken(VersionStore):
        def _write_current(self, version: str) -> None:
            raise OSError("disk full")

    store = Broken(tmp_path / "store")
    staging = _stage(store, 1)
    with pytest.raises(OSError, match="disk full"):
        store.publish(staging)
    assert store.versions() == [] and store.current_version() is None


def test_json_files_are_written_through_unique_temporary_files(tmp_path: Path) -> None:
    from engine.core.files import write_json_durably

    target = tmp_path / "report.json"
    barrier = threading.Barrier(4)

    def write(n: int) -> None:
        barrier.wait()
        for _ in range(20):
            write_json_durably(target, {"n": n})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert json.loads(target.read_text())["n"] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


# ---------------------------------------------------------------- 9: version names


BAD_VERSIONS = [
    "",
    "v1",
    "v000001/..",
    "../indexes/v000001",
    "v000001\n",
    "V000001",
    "v٠٠٠٠٠١",  # Arabic-Indic digits match \d, not a version name
    "v" + "0" * 299,  # over the file-name limit: InvalidInput, not OSError
    "x" * 300,
]


@pytest.mark.parametrize("store_class", [IndexStore, ModelStore])
def test_point_current_at_accepts_only_version_names(
    tmp_path: Path, store_class: type[VersionStore]
) -> None:
    store = store_class(tmp_path / "data" / "store")
    version = store.publish(_stage(store, 1))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / store.manifest_name).write_text("{}")
    for bad in [*BAD_VERSIONS, str(outside), str(store.root / version)]:
        with pytest.raises(InvalidInput, match="not a version name like v000001"):
            store.point_current_at(bad)
        with pytest.raises(InvalidInput):
            store.manifest(bad)
    with pytest.raises(NotFound, match="'v000002'"):
        store.point_current_at("v000002")
    assert store.current_version() == version
    store.point_current_at(version)
    assert store.current_version() == version


def test_a_long_bad_version_is_named_shortened(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        VersionStore(tmp_path).point_current_at("v" + "9" * 299)
    assert "'v999999" in str(caught.value) and len(str(caught.value)) < 200


def test_a_current_pointer_outside_the_store_is_not_followed(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "indexes")
    version = store.publish(_stage(store, 1))
    (store.root / CURRENT).write_text("../elsewhere\n")  # as an older release could write
    with pytest.raises(NotReady, match="'../elsewhere', not a version like v000001"):
        store.current_version()
    store.point_current_at(version)
    assert store.current_version() == version


def test_rollback_and_promote_refuse_paths_over_http(client: Any, runtime: Runtime) -> None:
    settings = runtime.settings
    index_store = IndexStore(settings.index_dir)
    model_store = ModelStore(settings.model_dir)
    index_version = index_store.publish(_stage(index_store, 1), make_current=False)
    model_version = model_store.publish(_stage(model_store, 1), make_current=False)
    outside = settings.data_dir.parent / "elsewhere"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    (outside / "model.json").write_text("{}")
    for route, store in (("rollback", index_store), ("promote", model_store)):
        for bad in [str(outside), "../indexes/v000001", "../models/v000001", "v" + "1" * 299]:
            response = client.post(f"/admin/api/{route}", json={"version": bad})
            assert response.status_code == 422, (route, bad, response.get_json())
            assert response.get_json()["error"] == "invalid_input"
            assert bad[:20] in response.get_json()["message"]
        response = client.post(f"/admin/api/{route}", json={"version": "v000042"})
        assert response.status_code == 404 and "'v000042'" in response.get_json()["message"]
        assert store.current_version() is None
    assert client.post("/admin/api/rollback", json={"version": index_version}).status_code == 200
    assert client.post("/admin/api/promote", json={"version": model_version}).status_code == 200
    assert index_store.current_version() == index_version
    assert model_store.current_version() == model_version


# ---------------------------------------------------------------- 5: job ids out of range


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


# ---------------------------------------------------------------- 12: private data files


@pytest.fixture
def umask_022() -> Any:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_dir_and_database_are_private(
    tmp_path: Path, embedder: Embedder, umask_022: None
) -> None:
    tmp_path.chmod(0o755)
    settings = Settings(data_dir=tmp_path / "new" / "var")
    rt = Runtime(settings, embedder=embedder)
    try:
        with rt.session() as session:
            session.execute(select(func.count()).select_from(Job))
        database = settings.data_dir / "recsearch.db"
        assert _mode(tmp_path / "new") == 0o700  # a parent we created
        assert _mode(settings.data_dir) == 0o700
        assert _mode(database) == 0o600
        for extra in ("-wal", "-shm"):
            side = database.with_name(database.name + extra)
            if side.exists():
                assert _mode(side) == 0o600
        for store in (IndexStore(settings.index_dir), ModelStore(settings.model_dir)):
            store.publish(_stage(store, 1))
            assert _mode(store.root) == 0o700
            assert _mode(store.root / "v000001") == 0o700
            assert _mode(store.root / CURRENT) == 0o600
    finally:
        rt.close()
    assert _mode(tmp_path) == 0o755  # an existing parent keeps its mode


def test_an_existing_open_data_dir_is_left_alone_with_a_warning(
    tmp_path: Path, embedder: Embedder, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    data_dir.chmod(0o750)  # e.g. opened on purpose to a group that runs the server
    with caplog.at_level(logging.WARNING, logger="engine"):
        rt = Runtime(Settings(data_dir=data_dir), embedder=embedder)
        rt.close()
    assert _mode(data_dir) == 0o750
    assert _mode(data_dir / "recsearch.db") == 0o600
    assert any("chmod 700" in r.getMessage() for r in caplog.records)


def test_a_version_folder_is_as_open_as_its_store(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "indexes"
    root.mkdir()
    root.chmod(0o750)
    store = IndexStore(root)
    version = store.publish(_stage(store, 1))
    assert _mode(root / version) == 0o750 and _mode(root / CURRENT) == 0o640


# ---------------------------------------------------------------- 15: expected job failures


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


# ---------------------------------------------------------------- one index status


def test_index_status_before_and_after_a_build(runtime: Runtime, seed_index: Path) -> None:
    from engine.index.status import index_status

    store = IndexStore(runtime.settings.index_dir)
    with runtime.session() as session:
        assert index_status(store, session) is None
    shutil.copytree(seed_index, runtime.settings.index_dir)
    with runtime.write_session() as session:
        upsert_items(session, [ItemIn(id="new-item", title="A brand new place")])
    with runtime.session() as session:
        status = index_status(store, session)
    assert status is not None
    manifest = store.manifest("v000001")
    assert status.model_dump() == {
        "version": "v000001",
        "items": 325,
        "factory": "Flat",
        "params": manifest["index"]["params"],
        "size_bytes": sum(
            p.stat().st_size for p in (store.root / "v000001").rglob("*") if p.is_file()
        ),
        "built_at": manifest["built_at"],
        "recall_at_10": manifest["recall_at_10"],
        "delta_items": 1,
        "vector_store": {"backend": "faiss"},
    }
    assert status.size_bytes > 0


def test_the_cli_status_shows_the_shared_index_status(runtime: Runtime, seed_index: Path) -> None:
    from click.testing import CliRunner

    from web.cli import Context, cli

    shutil.copytree(seed_index, runtime.settings.index_dir)
    result = CliRunner().invoke(
        cli, ["status"], obj=Context(runtime.settings, True, runtime), catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "v000001: 325 items, Flat" in result.output
    assert "; 0 items pending in the delta" in result.output
    assert "versions   v000001" in result.output


def test_searches_and_writes_survive_a_database_that_dropped_every_connection(
    built: Runtime, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A PostgreSQL restart or failover drops every pooled connection. Writes meet none (their
    pool pings at checkout); searches, whose pool does not ping, run once more."""
    if built.db.dialect.name != "postgresql":
        pytest.skip("SQLite has no server connections to drop")
    event = {"user_id": "traveller", "item_id": "tokyo-japan", "type": "view"}

    def serve() -> list[str]:
        assert client.post("/v1/events", json=event).status_code == 200
        found = client.get("/v1/search", query_string={"q": "museums", "user_id": "traveller"})
        assert found.status_code == 200, found.get_json()
        similar = client.get("/v1/items/paris-france/similar")
        assert similar.status_code == 200, similar.get_json()
        return [hit["id"] for hit in found.get_json()["results"]]

    assert serve()
    with built.db.connect() as conn:
        dropped = conn.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    assert dropped, "no connection was dropped"
    with caplog.at_level(logging.WARNING, logger="engine.runtime"):
        assert serve()
    assert "a search met a dropped database connection" in caplog.text
