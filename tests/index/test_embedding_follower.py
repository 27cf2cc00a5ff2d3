"""Real-time work done once: several server runtimes on one database elect one embedding
follower, which embeds each new item once and stores its vector; every runtime's delta loads
it and none runs the encoder for it. On SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select, text

from engine.catalog.items import ItemIn, delete_items, upsert_items
from engine.core.config import Settings
from engine.encoder.embedder import Embedder
from engine.index.stored_vectors import from_bytes
from engine.runtime import Runtime
from engine.store.models import ItemVector

NEW = {
    "id": "quokka-island",
    "title": "Quokkaville",
    "text": "A tiny island famous for the xylospongium festival and friendly marsupials.",
    "category": "island",
}


class CountingEmbedder:
    """The shared real encoder, counting the item texts each runtime encodes."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.texts: list[str] = []

    def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        self.texts.extend(texts)
        return self.inner.encode(texts, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecordingSink:
    """A vector store that records what the follower hands it."""

    def __init__(self) -> None:
        self.upserts: list[dict[str, Any]] = []
        self.deletes: list[str] = []

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        categories: Sequence[str | None],
        tags: Sequence[Sequence[str]] | None = None,
        attributes: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self.upserts.append(
            {
                "ids": list(ids),
                "vectors": vectors,
                "categories": list(categories),
                "attributes": list(attributes or []),
            }
        )

    def delete(self, ids: Sequence[str]) -> None:
        self.deletes.extend(ids)

    def upserted(self) -> list[str]:
        return [i for batch in self.upserts for i in batch["ids"]]


def write(runtime: Runtime, **fields: Any) -> None:
    with runtime.write_session() as session:
        upsert_items(session, [ItemIn(**{**NEW, **fields})])


def ids(client: Any, q: str, k: int = 3) -> list[str]:
    body = client.get("/v1/search", query_string={"q": q, "k": k}).get_json()
    return [r["id"] for r in body["results"]]


def stored_rows(runtime: Runtime) -> int:
    with runtime.session() as session:
        return int(session.scalar(select(func.count()).select_from(ItemVector)) or 0)


@pytest.fixture
def workers(built: Runtime, embedder: Embedder) -> Iterator[list[tuple[Runtime, CountingEmbedder]]]:
    """Two more runtimes on the built database and index, as two server processes would be:
    each with its own connections, lock and threads, and an encoder that counts."""
    made = []
    for _ in range(2):
        counting = CountingEmbedder(embedder)
        made.append((Runtime(built.settings, embedder=cast(Embedder, counting)), counting))
    yield made
    for rt, _ in made:
        rt.close()


def client_of(runtime: Runtime) -> Any:
    from web import create_app

    app = create_app(runtime=runtime)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {app.config['RECSEARCH_API_KEY']}"
    return client


def wait_for(condition: Any, timeout_s: float, what: str) -> float:
    """Seconds until condition() held; fails after timeout_s."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, what
        time.sleep(0.02)
    return time.monotonic() - started


def test_two_workers_embed_a_new_item_once_and_both_find_it_within_a_second(
    workers: list[tuple[Runtime, CountingEmbedder]],
) -> None:
    (a, count_a), (b, count_b) = workers
    clients = [client_of(a), client_of(b)]
    for client in clients:
        assert "quokka-island" not in ids(client, "xylospongium festival")  # starts both threads
    wait_for(lambda: a.follower.is_leader or b.follower.is_leader, 5, "nobody was elected")
    a.follower.run_once()  # both try the lock now, whatever their threads have done
    b.follower.run_once()
    assert [a.follower.is_leader, b.follower.is_leader].count(True) == 1

    worst = 0.0
    for n in range(3):
        write(a, id=f"quokka-{n}", text=f"{NEW['text']} Edition zorblax{n}.")
        written = time.monotonic()
        for client in clients:
            wait_for(
                lambda c=client, n=n: f"quokka-{n}" in ids(c, f"xylospongium zorblax{n}"),
                10,
                f"quokka-{n} was never found",
            )
        worst = max(worst, time.monotonic() - written)
    print(f"new item on both runtimes within {worst:.2f} s (worst of 3)")
    assert worst < 1.0, f"a new item took {worst:.2f} s to reach both runtimes"

    encoded = [t for t in count_a.texts + count_b.texts if "xylospongium" in t]
    assert len(encoded) == 3, encoded  # once per item, by one runtime only
    assert not (count_a.texts and count_b.texts)
    assert stored_rows(a) == 3


def test_the_delta_waits_for_stored_vectors_and_never_encodes(built: Runtime) -> None:
    built.follower.close()  # no follower in this process: only the delta
    artifact = built.live.get()
    write(built)
    snapshot = built.delta.refresh()
    assert snapshot is not None and snapshot.ids == [] and snapshot.pending == {"quokka-island"}
    assert "quokka-island" in snapshot.shadows() and "quokka-island" in snapshot.items
    assert built.follower.embedded == 0

    # Another process (a second runtime) is the follower; this one only loads its result.
    other = Runtime(built.settings, embedder=built.embedder)
    try:
        assert other.follower.run_once() == 1
    finally:
        other.close()
    snapshot = built.delta.refresh()
    assert snapshot is not None and snapshot.ids == ["quokka-island"] and not snapshot.pending
    assert snapshot.base_version == artifact.version
    with built.session() as session:
        row = session.get(ItemVector, "quokka-island")
        assert row is not None
        np.testing.assert_array_equal(from_bytes(row.vector), snapshot.vectors[0])


def test_a_dead_leader_is_replaced(workers: list[tuple[Runtime, CountingEmbedder]]) -> None:
    (a, _), (b, count_b) = workers
    assert a.follower.run_once() == 0 and a.follower.is_leader
    assert b.follower.run_once() == 0 and not b.follower.is_leader
    if a.settings.db_url.startswith("postgresql"):
        # The leader's connection drops (its process died, or the network): the server
        # releases the lock with the session, and the leader notices on its next try.
        admin = create_engine(a.settings.db_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = "
                    "current_database())"
                )
            ).scalar()
        admin.dispose()
        assert killed == 1
        time.sleep(0.2)
        assert b.follower.run_once() == 0 and b.follower.is_leader
        assert a.follower.run_once() == 0 and not a.follower.is_leader
    else:
        a.follower.close()  # closes the lock file, as the kernel does when a process dies
        assert b.follower.run_once() == 0 and b.follower.is_leader
    write(b)
    assert b.follower.run_once() == 1
    assert [t for t in count_b.texts if "xylospongium" in t]


def test_the_vector_sink_gets_upserts_and_deletions(
    workers: list[tuple[Runtime, CountingEmbedder]],
) -> None:
    (a, _), (b, _) = workers
    sink_a, sink_b = RecordingSink(), RecordingSink()
    a.follower.set_sink(sink_a)
    b.follower.set_sink(sink_b)
    assert a.follower.run_once() == 0 and a.follower.is_leader
    # A new sink first gets every item written since the version's catalog read (which the
    # build sets a second before it read, for late commits): delivery is at least once.
    sink_a.upserts.clear()
    write(a)
    a.follower.run_once()
    assert sink_a.upserted() == ["quokka-island"]
    batch = sink_a.upserts[-1]
    assert batch["categories"] == ["island"] and batch["vectors"].shape == (1, 384)
    with a.session() as session:
        row = session.get(ItemVector, "quokka-island")
        assert row is not None
        np.testing.assert_allclose(from_bytes(row.vector), batch["vectors"][0])
    a.follower.run_once()
    assert sink_a.upserted() == ["quokka-island"]  # handed once, not every poll

    # An attribute-only change is not re-embedded but reaches the store (same vector).
    write(a, attributes={"stars": 5})
    assert a.follower.run_once() == 0
    assert sink_a.upserted() == ["quokka-island", "quokka-island"]
    assert sink_a.upserts[-1]["attributes"] == [{"stars": 5}]
    np.testing.assert_allclose(sink_a.upserts[-1]["vectors"], batch["vectors"])

    with a.write_session() as session:
        assert delete_items(session, ["quokka-island", "paris-france"]) == []
    a.follower.run_once()
    assert sorted(sink_a.deletes) == ["paris-france", "quokka-island"]
    assert stored_rows(a) == 0  # the deleted item's vector went with it

    # The leader goes; the next one hands everything since the version again (idempotent).
    a.follower.close()
    assert b.follower.run_once() == 0 and b.follower.is_leader
    assert sorted(sink_b.deletes) == ["paris-france", "quokka-island"]
    write(b)  # written again: no longer deleted
    b.follower.run_once()
    handed = sink_b.upserted()
    # Every item written since the version's catalog read (the build set it a second before
    # it read), once; the deleted one not at all.
    assert handed.count("quokka-island") == 1 and "paris-france" not in handed
    assert len(handed) == len(set(handed))


def test_a_write_committed_late_is_not_skipped(
    workers: list[tuple[Runtime, CountingEmbedder]], settings: Settings
) -> None:
    """A long transaction (an ingest) commits rows older than rows another writer committed
    meanwhile: the delta and the follower must not have moved past them."""
    if not settings.db_url.startswith("postgresql"):
        pytest.skip("SQLite writers hold the one write lock: they commit in timestamp order")
    (a, _), _ = workers
    a.follower.run_once()
    a.delta.refresh()
    slow = a.sessions()
    upsert_items(slow, [ItemIn(**NEW)])  # written (timestamped) now, committed later
    time.sleep(0.05)
    write(a, id="later", title="Later", text="written after, committed first")
    a.follower.run_once()
    snapshot = a.delta.refresh()
    assert snapshot is not None and "later" in snapshot.ids
    slow.commit()
    slow.close()
    a.follower.run_once()
    snapshot = a.delta.refresh()
    assert snapshot is not None and "quokka-island" in snapshot.ids
