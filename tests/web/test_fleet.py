"""A fleet on FAISS: two `recsearch serve` processes (standing for two hosts) that share one
data dir (the index versions) and one database serve the same catalog. An item written on
one is found on the other within a second, events posted to one personalize searches on the
other, a build or a rollback published by any process moves both, and the fleet runs one
embedding follower.

With FAISS, index versions are files: a fleet shares the data dir (a network filesystem
across hosts). Servers with data dirs of their own, sharing only PostgreSQL and a Milvus
server, are issue 24's next step.
"""

from __future__ import annotations

import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from engine.core.config import Settings
from engine.core.secrets import api_key
from engine.store.election import _lock_key
from tests.serving import Served, built_env, cli, get, post


def _ids(server: Served, **query: Any) -> tuple[str, list[str]]:
    status, body = get(f"{server.base}/v1/search?{urllib.parse.urlencode(query)}")
    assert status == 200, body
    return body["index_version"], [r["id"] for r in body["results"]]


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
                    "AND ((classid::bigint << 32) | objid::bigint) = :key"
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

    # An item written through one server is found through the other.
    new = {
        "id": "zzyzx-atoll",
        "title": "Zzyzx Atoll",
        "text": "Qwvzzyzx lagoon.",
        "category": "island",
    }
    status, _ = post(f"{a.base}/v1/items", new, key=key)
    assert status == 201
    _until(lambda: "zzyzx-atoll" in _ids(b, q="Zzyzx Atoll qwvzzyzx", k=3)[1])

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
