"""Shared fixtures: a real encoder loaded once, a fresh database per test (SQLite always,
PostgreSQL when RECSEARCH_TEST_DATABASE_URL is set), and a built copy of the sample catalog."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from engine.core.config import Settings
from engine.encoder.embedder import Embedder
from engine.runtime import Runtime

# Deterministic examples, and no per-example deadline on a shared, noisy machine.
hypothesis_settings.register_profile("recsearch", derandomize=True, deadline=None)
hypothesis_settings.load_profile("recsearch")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_CATALOG = ROOT / "data" / "catalog.jsonl"
SHARED_DATA = ROOT.parent / "shared" / "data"
PG_URL = os.environ.get("RECSEARCH_TEST_DATABASE_URL", "")
PG_REASON = (
    "RECSEARCH_TEST_DATABASE_URL is not set: database tests ran on SQLite only "
    "(.ci/run points it at the local PostgreSQL)"
)

DATABASES = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.skipif(not PG_URL, reason=PG_REASON)),
]


# Markers by what a test needs, from the fixtures it uses (directly or through others); a test
# that builds its own runtime or encoder says so with @pytest.mark.db / .model itself.
MODEL_FIXTURES = {"embedder"}
DB_FIXTURES = {"db_url", "sqlite_settings", "pg_database"}


@pytest.hookimpl(tryfirst=True)  # before -m selects by them
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """unit: neither a database nor the model, and not slow (`pytest -m unit`, under a
    minute); db: a real SQLite or PostgreSQL database; model: the real encoder."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & MODEL_FIXTURES:
            item.add_marker(pytest.mark.model)
        if names & DB_FIXTURES:
            item.add_marker(pytest.mark.db)
        if all(item.get_closest_marker(name) is None for name in ("model", "db", "slow")):
            item.add_marker(pytest.mark.unit)


def pytest_report_header(config: pytest.Config) -> str:
    target = make_url(PG_URL).render_as_string(hide_password=True) if PG_URL else "not set"
    return f"recsearch: PostgreSQL tests: {target}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if PG_REASON in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} PostgreSQL test(s) skipped: {PG_REASON}")
    for report in terminalreporter.stats.get("skipped", []):
        if PG_REASON not in str(report.longrepr):
            terminalreporter.write_line(f"skipped {report.nodeid}: {report.longrepr[2]}")


@pytest.fixture(scope="session", autouse=True)
def encoder_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This run's encoder cache, in its temp folder, in place of the user's (~/.cache/recsearch):
    the default cache_dir of every Settings made here, and RECSEARCH_CACHE_DIR for the commands
    and servers the tests start. All reuse the session encoder's ONNX export, and nothing is
    written to the user's cache."""
    import engine.core.config

    folder = tmp_path_factory.mktemp("encoder") / "var"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.core.config, "user_cache_dir", lambda environ: folder)
        patch.setenv("RECSEARCH_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def embedder(encoder_cache: Path) -> Embedder:
    """The real all-MiniLM-L6-v2 on the default encoder, loaded once and shared; it holds no
    state. Its ONNX export (seconds) goes to this run's encoder cache, not ./var nor ~/.cache."""
    return Embedder(Settings(data_dir=encoder_cache))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A private PostgreSQL database for this test run, dropped at the end."""
    if not PG_URL:
        pytest.skip(PG_REASON)
    base = make_url(PG_URL)
    name = f"recsearch_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL to an empty database: a new SQLite file, or a wiped PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return wiped(str(request.getfixturevalue("pg_database")))


def wiped(url: str) -> str:
    """A PostgreSQL database emptied: its public schema dropped and made again."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture
def one_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database, not both: PostgreSQL, as production runs, when the run has one, else
    SQLite. For slow tests of what does not depend on the database, whose SQL paths the
    tests on both databases cover."""
    if PG_URL:
        return wiped(str(request.getfixturevalue("pg_database")))
    return f"sqlite:///{tmp_path / 'one.db'}"


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(data_dir=tmp_path / "var", database_url=db_url, index_poll_s=0.0)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """For tests about files and indexes, where the database kind does not matter."""
    return Settings(data_dir=tmp_path / "var", index_poll_s=0.0)


@pytest.fixture
def one_runtime(one_db_url: str, tmp_path: Path, embedder: Embedder) -> Iterator[Runtime]:
    """A runtime on one_db_url (an offline evaluation's metrics do not depend on it)."""
    rt = Runtime(
        Settings(data_dir=tmp_path / "var", database_url=one_db_url, index_poll_s=0.0),
        embedder=embedder,
    )
    yield rt
    rt.close()


@pytest.fixture
def runtime(settings: Settings, embedder: Embedder) -> Iterator[Runtime]:
    rt = Runtime(settings, embedder=embedder)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def seed_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """The sample catalog embedded once per run; builds that copy it reuse its vectors."""
    from indexer.build import build
    from indexer.ingest import ingest

    settings = Settings(data_dir=tmp_path_factory.mktemp("seed") / "var")
    rt = Runtime(settings, embedder=embedder)
    with rt.write_session() as session:
        ingest(rt, session, SAMPLE_CATALOG)
    with rt.session() as session:
        build(rt, session)
    rt.close()
    return settings.index_dir


@pytest.fixture
def built(runtime: Runtime, seed_index: Path) -> Runtime:
    """The runtime with the sample catalog ingested and a published index."""
    from indexer.build import build
    from indexer.ingest import ingest

    shutil.copytree(seed_index, runtime.settings.index_dir)
    with runtime.write_session() as session:
        ingest(runtime, session, SAMPLE_CATALOG)
    with runtime.session() as session:
        report = build(runtime, session)
    assert report.reused == report.item_count  # the seed's vectors were reused, not recomputed
    return runtime


@pytest.fixture
def app(runtime: Runtime):  # type: ignore[no-untyped-def]
    from web import create_app

    flask_app = create_app(runtime=runtime)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    """A client that sends the API key, as an application with write access would."""
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {app.config['RECSEARCH_API_KEY']}"
    return test_client


@pytest.fixture(scope="session")
def milvus_server_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Milvus standalone server (2.3.5, the `milvus` package), started once per run on
    loopback with authorization and TLS on, so every test on it also proves that credentials
    and a CA bundle reach the server; stopped by its PID. A tests.milvus_server.MilvusTarget."""
    from tests import milvus_server
    from tests.milvus_server import MilvusTarget

    why = milvus_server.available()
    if why:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("milvus-server")
    cert, key = milvus_server.self_signed(folder)
    server = milvus_server.start(folder / "server", auth=True, tls=(cert, key))
    try:
        yield MilvusTarget(
            "server",
            server.uri,
            {
                "milvus_uri": server.uri,
                "milvus_token": milvus_server.ROOT_TOKEN,
                "milvus_ca_cert": str(cert),
            },
        )
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_lite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`milvus-lite server`: Milvus Lite over TCP on a free loopback port, which several
    processes can share (a Lite file serves one), started once per run and stopped by its
    PID. A tests.milvus_server.MilvusTarget of kind "lite-server"."""
    import socket
    import subprocess
    import sys

    from tests.milvus_server import MilvusTarget

    command = Path(sys.executable).parent / "milvus-lite"
    if not command.exists():
        pytest.skip("milvus-lite (the milvus-lite package's server) is not installed")
    folder = tmp_path_factory.mktemp("milvus-lite-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    log = open(folder / "server.log", "wb")  # noqa: SIM115 (closed after the server stops)
    process = subprocess.Popen(
        [command, "server", "--data-dir", folder / "data", "--host", "127.0.0.1"]
        + ["--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (folder / "server.log").read_text(errors="replace")
            assert time.monotonic() < deadline, "milvus-lite server did not listen in 60 s"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        uri = f"http://127.0.0.1:{port}"
        yield MilvusTarget("lite-server", uri, {"milvus_uri": uri})
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
def serve() -> Iterator[Any]:
    """Starts `recsearch serve` (tests/serving.py's Served) and stops what it started:
    serve(env, workers=2, threads=2, verbose=False, dev=False) -> Served."""
    from tests.serving import Served

    started: list[Served] = []

    def start(env: dict[str, str], **options: Any) -> Served:
        served = Served(env, **options)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def write_jsonl(path: Path, rows: list[object]) -> Path:
    import json

    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def wait_done(client: Any, job_id: int, timeout_s: float = 120) -> dict[str, Any]:
    """The job's JSON once it has ended (through the admin API)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/admin/api/jobs/{job_id}").get_json()
        if job["state"] not in ("queued", "running"):
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def all_at_once(calls: list[Callable[[], Any]]) -> list[Any]:
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
