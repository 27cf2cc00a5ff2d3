"""A fleet on FAISS: two `recsearch serve` processes (standing for two hosts) that share one
data dir (the index versions) and one database serve the same catalog. An item written on
one is found on the other within a second, events posted to one personalize searches on the
other, a build or a rollback published by any process moves both, and the fleet runs one
embedding follower.

With FAISS, index versions are files: a fleet shares the data dir (a network filesystem
across hosts). Servers with data dirs of their own share only PostgreSQL and a Milvus server
(the standalone server, or `milvus-lite server`), with RECSEARCH_VERSION_SHARING=database:
each version is copied into the database and installed by every host.
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from engine.core.config import Settings
from engine.core.secrets import api_key
from engine.index.versions import INSTALLED
from engine.store.election import _lock_key
from tests.conftest import SAMPLE_CATALOG, wiped
from tests.milvus_server import MilvusTarget
from tests.serving import Served, built_env, cli, get, post


def _ids(server: Served, **query: Any) -> tuple[str, list[str]]:
    status, body = get(f"{server.base}/v1/search?{urllib.parse.urlencode(query)}")
    assert status == 200, body
    return body["index_version"], [r["id"] for r in body["results"]]


def _write_on_find_on(a: Served, b: Served, key: str) -> None:
    """An item written through server a is found through server b within a second."""
    new = {
        "id": "zzyzx-atoll",
        "title": "Zzyzx Atoll",
        "text": "Qwvzzyzx lagoon.",
        "category": "island",
    }
    status, _ = post(f"{a.base}/v1/items", new, key=key)
    assert status == 201
    took = _until(lambda: "zzyzx-atoll" in _ids(b, q="Zzyzx Atoll qwvzzyzx", k=3)[1])
    assert took < 1.0, took


def _until(check: Any, timeout_s: float = 10.0) -> float:
    """Seconds until check() is true (fails after timeout_s)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "the fleet did not converge"
        time.sleep(0.05)
    return time.monotonic() - started


def _followers(db_url: str) -> int:
    """Connections holding the embedding follower's advisory lock (PostgreSQL)."""
    key = _lock_key("embedding-follower")
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            held = conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND ((classid::bigint << 32) | objid::bigint) = :key "
                    # Advisory keys are per database; another test run's is not this one's.
                    "AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"key": key},
            ).scalar_one()
    finally:
        engine.dispose()
    return int(held)


@pytest.mark.slow
def test_two_servers_sharing_a_data_dir_and_a_database_serve_as_one(
    tmp_path: Path, seed_index: Path, db_url: str, serve: Any
) -> None:
    data_dir = tmp_path / "shared"
    env = built_env(data_dir, seed_index, database_url=db_url)
    key = api_key(Settings(data_dir=data_dir, database_url=db_url))
    a: Served = serve(env, workers=1, threads=2)
    b: Served = serve(env, workers=1, threads=2)
    a.wait_ready()
    b.wait_ready()
    version, _ = _ids(a, q="beach", k=3)
    assert _ids(b, q="beach", k=3)[0] == version

    # An item written through one server is found through the other within a second.
    _write_on_find_on(a, b, key)

    # Events posted to one server personalize searches on the other, at once.
    clicks = [
        {"user_id": "fleet-user", "item_id": i, "type": "purchase"}
        for i in ("kyoto-japan", "tokyo-japan", "osaka-japan")
    ]
    status, _ = post(f"{b.base}/v1/events", {"events": clicks}, key=key)
    assert status == 200
    anonymous = _ids(a, k=10)[1]
    personal = _ids(a, user_id="fleet-user", k=10)[1]
    # The purchases lead the popular list now, and the user's own list leaves them out (what
    # the user bought) and leans to their neighbourhood: both read b's writes.
    bought = {e["item_id"] for e in clicks}
    assert set(anonymous[:3]) == bought, anonymous
    assert not bought & set(personal) and personal != anonymous[3:], personal

    # A build published by another process moves both servers; so does a rollback.
    assert "published index" in cli(env, "build").stdout
    _until(lambda: _ids(a, q="beach")[0] != version and _ids(b, q="beach")[0] != version)
    newest = _ids(a, q="beach")[0]
    assert _ids(b, q="beach")[0] == newest
    status, _ = post(f"{b.base}/admin/api/rollback", {"version": version}, key=key)
    assert status == 200
    _until(lambda: _ids(a, q="beach")[0] == version == _ids(b, q="beach")[0])

    # One embedding follower in the fleet (the lock is a PostgreSQL advisory lock, or a
    # file lock beside an SQLite database: one holder either way; counted on PostgreSQL).
    if db_url.startswith("postgresql"):
        assert _followers(db_url) == 1


FLEET_KEY = "fleet-test-key-0123456789abcdef0123456789"


def _fleet_env(
    data_dir: Path, db_url: str, milvus: MilvusTarget, encoders: Path | None
) -> dict[str, str]:
    """A host of the fleet: a data dir of its own, the shared PostgreSQL and Milvus, versions
    shared through the database. encoders: a data dir whose ONNX exports to copy."""
    env = dict(
        os.environ,
        RECSEARCH_DATA_DIR=str(data_dir),
        RECSEARCH_DATABASE_URL=db_url,
        RECSEARCH_VERSION_SHARING="database",
        RECSEARCH_API_KEY=FLEET_KEY,
        RECSEARCH_VECTOR_STORE="milvus",
        RECSEARCH_MILVUS_COLLECTION=f"fleet_{milvus.kind.replace('-', '_')}",
        **{f"RECSEARCH_{k.upper()}": v for k, v in milvus.settings.items()},
    )
    if encoders is not None and (encoders / "encoders").is_dir():
        shutil.copytree(encoders / "encoders", data_dir / "encoders")
    return env


@pytest.fixture(params=["server", "lite-server"])
def fleet_milvus(request: pytest.FixtureRequest) -> MilvusTarget:
    """The Milvus a fleet shares: the real standalone server, and `milvus-lite server`."""
    name = "milvus_server_target" if request.param == "server" else "milvus_lite_server"
    target: MilvusTarget = request.getfixturevalue(name)
    return target


@pytest.mark.slow
def test_servers_with_data_dirs_of_their_own_serve_as_one(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    seed_index: Path,
    pg_database: str,
    fleet_milvus: MilvusTarget,
    serve: Any,
) -> None:
    """Issue 24: hosts share only PostgreSQL and a Milvus server. Index versions travel
    through the database (RECSEARCH_VERSION_SHARING=database): the first host's build, a
    build on a third data dir (a worker host) and a rollback through one server move both."""
    db_url = wiped(pg_database)
    a_dir, b_dir, worker_dir = tmp_path / "host-a", tmp_path / "host-b", tmp_path / "worker"
    # The ONNX export the shared `embedder` fixture made this run (a fresh one takes tens of
    # seconds per data dir).
    exports = next(tmp_path_factory.getbasetemp().glob("encoder*/var"), None)
    env_a = _fleet_env(a_dir, db_url, fleet_milvus, exports)
    shutil.copytree(seed_index, a_dir / "indexes")  # its vectors are reused
    cli(env_a, "ingest", str(SAMPLE_CATALOG))
    assert "published index" in cli(env_a, "build").stdout
    # Host b has never built: it installs what the database says serves.
    env_b = _fleet_env(b_dir, db_url, fleet_milvus, exports)
    key = FLEET_KEY
    a: Served = serve(env_a, workers=1, threads=2)
    b: Served = serve(env_b, workers=1, threads=2)
    a.wait_ready()
    b.wait_ready()
    version, _ = _ids(a, q="beach", k=3)
    assert _ids(b, q="beach", k=3)[0] == version
    assert (b_dir / "indexes" / version / "items.json").is_file()

    # An item written through one server is found through the other within a second.
    _write_on_find_on(a, b, key)

    # Events posted to one server personalize searches on the other.
    clicks = [
        {"user_id": "fleet-user", "item_id": i, "type": "purchase"}
        for i in ("kyoto-japan", "tokyo-japan", "osaka-japan")
    ]
    status, _ = post(f"{a.base}/v1/events", {"events": clicks}, key=key)
    assert status == 200
    bought = {e["item_id"] for e in clicks}
    assert set(_ids(b, k=10)[1][:3]) == bought
    assert not bought & set(_ids(b, user_id="fleet-user", k=10)[1])

    # A build on a third host (a worker's data dir) moves both servers.
    env_worker = _fleet_env(worker_dir, db_url, fleet_milvus, exports)
    assert "published index" in cli(env_worker, "build").stdout
    _until(lambda: _ids(a, q="beach")[0] != version and _ids(b, q="beach")[0] != version)
    newest = _ids(a, q="beach")[0]
    assert _ids(b, q="beach")[0] == newest
    assert (a_dir / "indexes" / newest / INSTALLED).is_file()  # built elsewhere, installed
    assert "zzyzx-atoll" in _ids(b, q="Zzyzx Atoll qwvzzyzx", k=3)[1]

    # A rollback through one server's admin API moves both; the written item still serves.
    status, body = post(f"{b.base}/admin/api/rollback", {"version": version}, key=key)
    assert status == 200, body
    _until(lambda: _ids(a, q="beach")[0] == version == _ids(b, q="beach")[0])
    assert "zzyzx-atoll" in _ids(a, q="Zzyzx Atoll qwvzzyzx", k=3)[1]
    # A version no host published to the database is not one to roll back to.
    status, _ = post(f"{a.base}/admin/api/rollback", {"version": "v000001"}, key=key)
    assert status == 404
    # So does one by the CLI on the worker host, which serves nothing.
    assert f"index {newest} is current" in cli(env_worker, "rollback", newest).stdout
    _until(lambda: _ids(a, q="beach")[0] == newest == _ids(b, q="beach")[0])

    assert _followers(db_url) == 1
