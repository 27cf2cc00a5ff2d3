"""A database that goes away answers 503 with Retry-After, never 500, and the server recovers
by itself: a private PostgreSQL server (tests/pg_replica.py) restarted and hard-stopped under
a real `recsearch serve` mid-load, and backends of the shared server terminated mid-request.
Every event the server acknowledged is stored exactly once."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text

from engine.runtime import Runtime
from engine.store.models import Event
from tests import pg_replica
from tests.serving import Served, built_env

KEY = "outage-test-key-0123456789abcdef0123456789"
ITEMS = ("kyoto-japan", "paris-france", "tokyo-japan", "osaka-japan")


@pytest.fixture
def private_pg() -> Iterator[pg_replica.PrivateServer]:
    reason = pg_replica.missing()
    if reason:
        pytest.skip(reason)
    server = pg_replica.PrivateServer()
    yield server
    server.close()


class Load:
    """Threads sending searches and event batches (each event with its own event_id), noting
    every status, every 503's headers and body, and every event the server acknowledged."""

    def __init__(self, base: str, threads: int = 3) -> None:
        self.base = base
        self.statuses: Counter[int] = Counter()
        self.bad: list[str] = []  # a 5xx other than a proper 503, or a socket error
        self.acknowledged: list[str] = []
        self.last_ok = 0.0
        self._n = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._n += 1
                n = self._n
            if n % 3 == 0:
                ids = [f"outage-{n}-{i}" for i in range(2)]
                events = [
                    {
                        "event_id": e,
                        "user_id": f"u{n % 5}",
                        "item_id": ITEMS[n % 4],
                        "type": "click",
                    }
                    for e in ids
                ]
                request = urllib.request.Request(
                    f"{self.base}/v1/events",
                    json.dumps({"events": events}).encode(),
                    {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
                )
            else:
                ids = []
                query = {
                    "q": f"old town {n}",
                    "k": 5,
                    **({"user_id": f"u{n % 5}"} if n % 2 else {}),
                }
                request = urllib.request.Request(
                    f"{self.base}/v1/search?{urllib.parse.urlencode(query)}"
                )
            self._send(request, ids)

    def _send(self, request: urllib.request.Request, ids: list[str]) -> None:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status = response.status
                response.read()
        except urllib.error.HTTPError as error:
            status = error.code
            body = error.read().decode(errors="replace")
            proper = (
                status == 503
                and error.headers.get("Retry-After") == "2"
                and json.loads(body).get("error") == "database_unavailable"
            )
            if not proper:
                self.bad.append(f"{status} {error.headers.get('Retry-After')} {body[:300]}")
        except OSError as error:
            self.bad.append(f"socket: {error}")
            return
        with self._lock:
            self.statuses[status] += 1
            if status == 200:
                self.last_ok = time.monotonic()
                self.acknowledged.extend(ids)

    def recovered(self, timeout_s: float = 30) -> float:
        """Seconds until a request succeeds again."""
        started = time.monotonic()
        while self.last_ok < started:
            assert time.monotonic() - started < timeout_s, "the server did not recover"
            time.sleep(0.05)
        return self.last_ok - started


def stored_events(url: str, ids: list[str]) -> Counter[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.scalars(select(Event.event_id).where(Event.event_id.in_(ids)))
            return Counter(found)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_restart_and_a_hard_stop_answer_503_and_recover_without_a_restart(
    private_pg: pg_replica.PrivateServer, tmp_path: Path, seed_index: Path, serve: Any
) -> None:
    env = built_env(
        tmp_path / "var", seed_index, database_url=private_pg.url, RECSEARCH_API_KEY=KEY
    )
    server: Served = serve(env, workers=2, threads=4)
    server.wait_ready()
    workers = server.worker_pids()
    load = Load(server.base)
    try:
        time.sleep(1.5)
        private_pg.server.stop("immediate")  # a crash: no shutdown checkpoint
        time.sleep(1.0)
        try:
            urllib.request.urlopen(f"{server.base}/readyz", timeout=30)
            raise AssertionError("ready without its database")
        except urllib.error.HTTPError as error:
            assert error.code == 503 and error.headers.get("Retry-After") == "2"
            assert json.loads(error.read())["database"].startswith("unreachable")
        time.sleep(2.0)
        private_pg.server.start()
        load.recovered()
        time.sleep(1.0)
        private_pg.server.stop("fast")  # a restart, as pg_ctlcluster restart does it
        private_pg.server.start()
        load.recovered()
        time.sleep(1.5)
    finally:
        load.stop()
    # The figures, for the record (pytest -s shows them): every answer by status.
    print(f"restart and hard stop: {dict(load.statuses)}, {len(load.acknowledged)} events acked")
    assert load.bad == [], load.bad[:5]
    assert set(load.statuses) <= {200, 503}, load.statuses
    assert load.statuses[503] > 0 and load.statuses[200] > 0, load.statuses  # both happened
    # Recovered by itself: the same processes serve.
    assert server.process.poll() is None and server.worker_pids() == workers
    assert server.search("old town")
    stored = stored_events(private_pg.url, load.acknowledged)
    assert len(load.acknowledged) > 0
    assert all(stored[e] == 1 for e in load.acknowledged), "an acknowledged event was lost"


def test_terminated_backends_answer_200_or_503_never_500(client: Any, built: Runtime) -> None:
    """pg_terminate_backend on the shared server, over and over, while requests run."""
    if not built.settings.db_url.startswith("postgresql"):
        pytest.skip("SQLite has no server backends to terminate")
    statuses: Counter[int] = Counter()
    bodies: list[str] = []
    acknowledged: list[str] = []
    stop = threading.Event()
    app = client.application
    auth = client.environ_base["HTTP_AUTHORIZATION"]

    def requests(worker: int) -> None:
        local = app.test_client()
        local.environ_base["HTTP_AUTHORIZATION"] = auth
        n = 0
        while not stop.is_set():
            n += 1
            if n % 2:
                response = local.get(
                    "/v1/search", query_string={"q": f"beach {n}", "user_id": "u1"}
                )
                ids: list[str] = []
            else:
                ids = [f"term-{worker}-{n}"]
                event = {
                    "event_id": ids[0],
                    "user_id": "u1",
                    "item_id": "kyoto-japan",
                    "type": "view",
                }
                response = local.post("/v1/events", json=event)
            statuses[response.status_code] += 1
            if response.status_code == 200:
                acknowledged.extend(ids)
            elif response.status_code != 503 or response.headers.get("Retry-After") != "2":
                bodies.append(f"{response.status_code} {response.get_data(as_text=True)[:300]}")

    threads = [threading.Thread(target=requests, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    killer = create_engine(built.settings.db_url, isolation_level="AUTOCOMMIT")
    try:
        with killer.connect() as conn:
            for _ in range(10):
                time.sleep(0.3)
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        killer.dispose()
    assert bodies == [], bodies[:5]
    assert statuses[200] > 0, statuses
    with built.session() as session:
        found = Counter(
            session.scalars(select(Event.event_id).where(Event.event_id.in_(acknowledged)))
        )
    assert all(found[e] == 1 for e in acknowledged)
    with built.session() as session:
        assert session.scalar(select(func.count()).select_from(Event)) >= len(acknowledged)
