"""Servers as production runs them, with processes killed by SIGKILL: a new item reaches
every server within a second and is embedded once, by whichever server holds the election;
events acknowledged while a worker dies are counted once, and re-sending them counts
nothing twice. Real gunicorn servers on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from engine.encoder.embedder import Embedder
from engine.store.models import Covisit, Event, ItemStats, ItemVector, UserFeatures
from tests import serving
from tests.conftest import SAMPLE_CATALOG
from tests.serving import Served, built_env, cli, workers_of

pytestmark = pytest.mark.slow

API_KEY = "reliability-test-key-0123456789abcdef0123"
LEADS = "now embeds new items for every server"
EMBEDDED = "embedded 1 new item texts"


def post(base: str, path: str, body: Any, timeout_s: float = 60) -> tuple[int, Any]:
    return serving.post(f"{base}{path}", body, key=API_KEY, timeout_s=timeout_s)


@pytest.fixture
def served_env(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    seed_index: Path,
    embedder: Embedder,
    db_url: str,
) -> dict[str, str]:
    """A data dir and database with the sample catalog ingested and built; the ONNX export the
    shared `embedder` fixture made this run is reused (a fresh one takes tens of seconds)."""
    exports = next(tmp_path_factory.getbasetemp().glob("encoder*/var"), None)
    return built_env(
        tmp_path / "var",
        seed_index,
        database_url=db_url,
        encoder_exports=exports,
        RECSEARCH_API_KEY=API_KEY,
        RECSEARCH_INDEX_POLL_S="0",
    )


@pytest.fixture
def servers(served_env: dict[str, str], serve: Any) -> list[Served]:
    made = [serve(served_env, workers=1, verbose=True) for _ in range(2)]
    for server in made:
        server.wait_ready()
    return made


def stored_vectors(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        with Session(engine) as session:
            return int(session.scalar(select(func.count()).select_from(ItemVector)) or 0)
    finally:
        engine.dispose()


def time_until_found(servers: list[Served], item_id: str, q: str, timeout_s: float) -> float:
    """Seconds from now until every server's search returns item_id."""
    started = time.monotonic()
    waiting = list(servers)
    while waiting:
        waiting = [s for s in waiting if item_id not in s.search(q)]
        assert time.monotonic() - started < timeout_s, f"{item_id} not found in {timeout_s} s"
    return time.monotonic() - started


def test_a_new_item_is_on_every_server_within_a_second_and_embedded_once(
    servers: list[Served], db_url: str
) -> None:
    for server in servers:
        assert server.search("Eiffel Tower")[0] == "paris-france"  # starts the followers
    deadline = time.monotonic() + 10
    while sum(s.log_count(LEADS) for s in servers) == 0:
        assert time.monotonic() < deadline, "no server was elected"
        time.sleep(0.05)
    (leader,) = [s for s in servers if s.log_count(LEADS)]
    other = next(s for s in servers if s is not leader)

    item = {
        "id": "quokka-island",
        "title": "Quokkaville",
        "text": "A tiny island famous for the xylospongium festival and friendly marsupials.",
        "category": "island",
    }
    written = time.monotonic()
    assert post(other.base, "/v1/items", item)[0] == 201  # written on the one that follows
    took = time.monotonic() - written
    took += time_until_found(servers, "quokka-island", "xylospongium festival", 10)
    print(f"\nnew item searchable on both servers {took:.2f} s after the POST")
    assert took < 1.0
    assert sum(s.log_count(EMBEDDED) for s in servers) == 1 == leader.log_count(EMBEDDED)
    assert stored_vectors(db_url) == 1

    # SIGKILL the leading worker: the other server takes the election over (the lock went
    # with the dead process's connection or file) and embeds the next item.
    os.kill(min(workers_of(leader.process.pid)), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while other.log_count(LEADS) == 0:
        assert time.monotonic() < deadline, "the survivor did not take the election over"
        time.sleep(0.05)
    item2 = dict(item, id="quokka-beach", text="Black sand and the zorblaxian tide pools.")
    written = time.monotonic()
    assert post(other.base, "/v1/items", item2)[0] == 201
    took = time.monotonic() - written + time_until_found([other], "quokka-beach", "zorblaxian", 10)
    print(f"after the leader's SIGKILL: searchable on the survivor after {took:.2f} s")
    assert took < 1.0
    leader.wait_ready()  # its replacement worker catches up from the stored vector
    time_until_found([leader], "quokka-beach", "zorblaxian", 10)
    embedded = [line for s in servers for line in s.lines if EMBEDDED in line]
    assert len(embedded) == 2, embedded
    assert stored_vectors(db_url) == 2


def busy_worker(master: int, port: int) -> int | None:
    """The worker holding an established connection on the port (serving a request now)."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # ESTABLISHED
                    established.add(fields[9])  # the socket's inode
    for pid in workers_of(master):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in established:
                return pid
    return None


def catalog_ids() -> list[str]:
    return [json.loads(line)["id"] for line in SAMPLE_CATALOG.read_text().splitlines()]


def event_batches(n_batches: int, size: int) -> list[list[dict[str, Any]]]:
    items = catalog_ids()
    types = ["view", "click", "cart", "purchase"]
    batches = []
    for b in range(n_batches):
        batch = []
        for i in range(size):
            n = b * size + i
            batch.append(
                {
                    "event_id": f"e{n}",
                    "user_id": f"u{n % 37}",
                    "item_id": items[(n * 7) % len(items)],
                    "type": types[n % len(types)],
                    "ts": 1_700_000_000 + n,
                }
            )
        batches.append(batch)
    return batches


def database_state(db_url: str) -> dict[str, Any]:
    """What events feed, in a form to compare: counts exact, sums of floats approximately."""
    engine = create_engine(db_url)
    try:
        with Session(engine) as session:
            users = {
                u.user_id: (u.event_count, dict(u.counts), [r[0] for r in u.recent])
                for u in session.scalars(select(UserFeatures))
            }
            items = {
                s.item_id: (dict(s.counts), pytest.approx(s.popularity, rel=1e-9))
                for s in session.scalars(select(ItemStats))
            }
            covisits = {
                (c.item_a, c.item_b): pytest.approx(c.weight, rel=1e-9)
                for c in session.scalars(select(Covisit))
            }
            events = session.scalar(select(func.count()).select_from(Event))
            distinct = session.scalar(select(func.count(func.distinct(Event.event_id))))
        return {
            "users": users,
            "items": items,
            "covisits": covisits,
            "events": events,
            "distinct": distinct,
        }
    finally:
        engine.dispose()


def test_events_acknowledged_while_a_worker_is_killed_count_once(
    served_env: dict[str, str], db_url: str, tmp_path: Path, serve: Any
) -> None:
    batches = event_batches(n_batches=30, size=200)
    total = sum(len(b) for b in batches)
    server = serve(served_env, workers=2, verbose=True)
    retried: list[int] = []
    try:
        server.wait_ready()
        acked = 0

        def stream() -> None:
            # One batch at a time, retried until acknowledged: the order every batch reaches
            # the database in is the order sent, whatever died on the way.
            nonlocal acked
            for n, batch in enumerate(batches):
                while True:
                    try:
                        status, body = post(server.base, "/v1/events", {"events": batch})
                    except (OSError, urllib.error.URLError):
                        status, body = 0, None
                    if status == 200:
                        assert body["recorded"] + body["duplicates"] == len(batch)
                        acked += 1
                        break
                    retried.append(n)
                    time.sleep(0.05)

        sender = threading.Thread(target=stream)
        sender.start()
        for when in (5, 15):  # twice, SIGKILL the worker serving a batch mid-stream
            victim = None
            while victim is None and sender.is_alive():
                if acked >= when:
                    victim = busy_worker(server.process.pid, server.port)
                time.sleep(0.002)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
        sender.join(timeout=600)
        assert not sender.is_alive() and acked == len(batches)
        assert retried, "no kill hit a batch in flight"
        state = database_state(db_url)
        assert state["events"] == state["distinct"] == total  # each acknowledged event once
        assert sum(u[0] for u in state["users"].values()) == total
        assert sum(sum(c.values()) for c, _ in state["items"].values()) == total

        # Everything again: all duplicates, and nothing changes.
        for batch in batches:
            status, body = post(server.base, "/v1/events", {"events": batch})
            assert status == 200 and body["recorded"] == 0 and body["duplicates"] == len(batch)
        assert database_state(db_url) == state
    finally:
        server.stop()
    print(f"\nbatches retried after a worker died: {sorted(set(retried))}")

    # The same batches recorded once, in order, by one process: the same users, item
    # statistics and co-visitation.
    reference = dict(
        served_env,
        RECSEARCH_DATA_DIR=str(tmp_path / "reference"),
        RECSEARCH_DATABASE_URL="",
    )
    shutil.copytree(
        Path(served_env["RECSEARCH_DATA_DIR"]) / "indexes", tmp_path / "reference" / "indexes"
    )
    cli(reference, "ingest", str(SAMPLE_CATALOG))
    events_file = tmp_path / "events.jsonl"
    events_file.write_text("".join(json.dumps(e) + "\n" for b in batches for e in b))
    cli(reference, "events", str(events_file))
    expected = database_state(f"sqlite:///{tmp_path / 'reference' / 'recsearch.db'}")
    assert state["users"] == expected["users"]
    assert state["items"] == expected["items"]
    assert state["covisits"] == expected["covisits"]
