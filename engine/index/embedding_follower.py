"""The embedding follower: items written since the serving version are embedded once, by one
elected process, and their vectors stored in SQL for every server's delta to load.

Every server process runs a follower; one wins the election (engine.store.election) and works,
the others only retry the lock, so when the leader dies another takes over within a poll.
The leader reads items in (updated_at, id) order from the serving version's watermark, and
embeds those whose text differs from the version's and has no stored vector yet. Each batch
is stored in one transaction before it is handed on, so a leader killed mid-way loses at
most the batch it was encoding, which the next leader embeds again.

A vector store that takes upserts and deletes directly (Milvus) plugs in as a VectorSink:
the leader hands it every item written since the version with its current vector, and every
item deleted, at least once and in write order (again from the version's watermark after an
election or a new version, so nothing a dead leader did not hand on is lost).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from engine.catalog.items import INDEXED_COLUMNS, embedding_text, settled_before, text_hash
from engine.core.clock import utcnow
from engine.core.poller import Poller
from engine.index import stored_vectors
from engine.index.artifact import IndexArtifact, LiveIndex
from engine.index.delta import version_watermark
from engine.store.db import WRITE_INTENT
from engine.store.election import Leadership
from engine.store.models import Item, ItemTombstone
from engine.store.notify import announce

log = logging.getLogger(__name__)

# Items per transaction: a bounded encode (a second or so on a CPU) between commits.
BATCH = 256


class VectorSink(Protocol):
    """A vector store that serves upserts and deletes between builds (e.g. Milvus's
    engine.index.ann.milvus_writer.MilvusWriter, whose signatures these are).

    Called by the elected follower only, after the vectors are stored; either call may
    repeat items already handed (after an election, a new version or a failed call), so
    both must be idempotent. An exception makes the next poll hand everything again.
    """

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,  # (n, dim) float32, L2-normalized, row-aligned with ids
        categories: Sequence[str | None],
        tags: Sequence[Sequence[str]] | None = None,
        attributes: Sequence[Mapping[str, Any]] | None = None,
    ) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...


@dataclass
class _Cursor:
    """Where the follower reads from: (updated_at, id) of the last item it has done for good."""

    version: str
    updated_at: datetime
    item_id: str = ""
    deleted_at: datetime | None = None  # the same for tombstones


class EmbeddingFollower:
    """Embeds new and changed items once for all servers on the database."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        live: LiveIndex,
        embed: Callable[[list[str]], np.ndarray],
        leadership: Leadership,
        poll_s: float,
        *,
        sink: VectorSink | None = None,
        on_stored: Callable[[], None] | None = None,
        embed_chunks: Callable[[list[str]], tuple[list[np.ndarray], str] | None] | None = None,
    ) -> None:
        """embed_chunks: texts → each one's chunk vectors and the spec that cut them
        (engine.index.chunks.embed_chunks), stored with the vector; None (or a None result):
        chunking is off."""
        self.sessions = sessions
        self.live = live
        self.embed = embed
        self.embed_chunks = embed_chunks
        self.leadership = leadership
        self.poll_s = max(poll_s, 0.02)
        self.sink = sink
        self.on_stored = on_stored
        self.is_leader = False
        self.embedded = 0  # texts this process has encoded, for tests and reports
        self._cursor: _Cursor | None = None
        # Items read past the settled horizon are read again next poll; the sink gets an
        # item again only when it changed: id → updated_at handed.
        self._handed: dict[str, datetime] = {}
        self._handed_deletes: dict[str, datetime] = {}
        self._lock = threading.Lock()
        # A failed pass is retried at the next poll, from the last stored batch.
        self._poller = Poller(
            "embedding-follower",
            self.run_once,
            self.poll_s,
            at_start=True,
            failed="the embedding follower failed",
            on_error=lambda _: self._forget_cursor(),
        )

    def wake(self) -> None:
        """Look now rather than at the next poll (items were written)."""
        self._poller.wake()

    def _forget_cursor(self) -> None:
        with self._lock:
            self._cursor = None

    def set_sink(self, sink: VectorSink | None) -> None:
        """Plug a vector store in (or out); it first gets everything since the version."""
        with self._lock:
            self.sink = sink
            self._cursor = None

    def start(self) -> None:
        self._poller.start()

    def run_once(self) -> int:
        """If this process leads (or can take the lead now), embed and store what the
        serving version lacks and hand it to the sink; returns how many texts it encoded."""
        with self._lock:
            if self._poller.stopping.is_set() or not self.leadership.try_acquire():
                if self.is_leader:
                    log.warning("this process lost the embedding follower's lock")
                self.is_leader = False
                return 0
            if not self.is_leader:
                log.info("this process now embeds new items for every server")
                self.is_leader = True
                self._cursor = None  # start from the version: the last leader may have died
            artifact = self.live.get_or_none()
            if artifact is None:
                return 0
            if self._cursor is None or self._cursor.version != artifact.version:
                watermark = version_watermark(artifact)
                self._cursor = _Cursor(artifact.version, watermark, "", watermark)
                self._handed.clear()
                self._handed_deletes.clear()
            try:
                return self._follow(artifact, self._cursor)
            except BaseException:
                self._cursor = None
                raise

    def catch_up(self) -> bool:
        """Run a pass now; True if this process leads, and so everything written before the
        call that the serving version lacks is stored (by this pass or an earlier one)."""
        self.run_once()
        return self.is_leader

    def _follow(self, artifact: IndexArtifact, cursor: _Cursor) -> int:
        model = str(artifact.manifest["model"]["name"])
        encoded = 0
        with self.sessions() as session:
            horizon = settled_before(session)
        after = (cursor.updated_at, cursor.item_id)
        while True:
            with self.sessions() as session:
                rows = session.execute(
                    select(*INDEXED_COLUMNS, Item.updated_at)
                    .where(
                        or_(
                            Item.updated_at > after[0],
                            and_(Item.updated_at == after[0], Item.id > after[1]),
                        )
                    )
                    .order_by(Item.updated_at, Item.id)
                    .limit(BATCH)
                ).all()
            if not rows:
                break
            encoded += self._embed_batch(artifact, model, rows)
            after = (rows[-1].updated_at, rows[-1].id)
            # Only rows older than the horizon are final; later ones are read again.
            if rows[-1].updated_at < horizon:
                cursor.updated_at, cursor.item_id = after
            if len(rows) < BATCH:
                break
        if self.sink is not None:
            self._hand_deletions(cursor, horizon)
        self._handed = {i: t for i, t in self._handed.items() if t >= cursor.updated_at}
        return encoded

    def _embed_batch(self, artifact: IndexArtifact, model: str, rows: Sequence[Any]) -> int:
        """Embed and store the rows' texts that have no vector yet; hand the rows to the sink.

        Encodes outside any transaction and writes in a short one that takes the write lock
        first: on SQLite a read transaction that later writes fails if another writer
        committed in between, which under a stream of events would be most of the time.
        """
        ids: list[str] = []
        categories: list[str | None] = []
        hashes: list[str] = []
        texts: dict[str, str] = {}  # text hash → text
        for row in rows:
            text = embedding_text(row.title, row.text, row.category, row.tags or [])
            digest = text_hash(model, text)
            ids.append(row.id)
            categories.append(row.category)
            hashes.append(digest)
            texts[digest] = text
        in_version = {
            i: h
            for i, h in zip(ids, hashes, strict=True)
            if (r := artifact.row_of(i)) is not None and artifact.text_hashes[r] == h
        }
        need = [i for i in ids if i not in in_version]
        with self.sessions() as session:
            stored = stored_vectors.stored_hashes(session, need)
        by_id = dict(zip(ids, hashes, strict=True))
        todo = [i for i in need if stored.get(i) != by_id[i]]
        encoded = 0
        if todo:
            new_hashes = list(dict.fromkeys(by_id[i] for i in todo))  # one encode per text
            vectors = self.embed([texts[h] for h in new_hashes])
            chunked = None
            if self.embed_chunks is not None:
                chunked = self.embed_chunks([texts[h] for h in new_hashes])
            encoded = len(new_hashes)
            self.embedded += encoded
            of_hash = dict(zip(new_hashes, vectors, strict=True))
            chunks = None
            if chunked is not None:
                chunks_of = dict(zip(new_hashes, chunked[0], strict=True))
                chunks = ([chunks_of[by_id[i]] for i in todo], chunked[1])
            with self.sessions() as session:
                session.connection(execution_options=WRITE_INTENT)
                stored_vectors.save(
                    session,
                    todo,
                    [by_id[i] for i in todo],
                    np.stack([of_hash[by_id[i]] for i in todo]),
                    model,
                    utcnow(),
                    chunks,
                )
                announce(session)  # every server's delta loads them at commit
                session.commit()
            log.info("embedded %d new item texts for every server", encoded)
            if self.on_stored is not None:
                self.on_stored()
        if self.sink is not None:
            with self.sessions() as session:
                self._hand_upserts(session, artifact, rows, by_id, in_version)
        return encoded

    def _hand_upserts(
        self,
        session: Session,
        artifact: IndexArtifact,
        rows: Sequence[Any],
        by_id: dict[str, str],
        in_version: dict[str, str],
    ) -> None:
        assert self.sink is not None
        fresh = [r for r in rows if self._handed.get(r.id) != r.updated_at]
        if not fresh:
            return
        ids = [r.id for r in fresh]
        loaded = stored_vectors.load_matching(
            session, {i: by_id[i] for i in ids if i not in in_version}
        )
        handed: list[Any] = []
        vectors: list[np.ndarray] = []
        for row in fresh:
            main_row = artifact.row_of(row.id)
            if row.id in in_version and main_row is not None:
                vectors.append(np.asarray(artifact.vectors()[main_row]))
            elif row.id in loaded:
                vectors.append(loaded[row.id])
            else:  # deleted or rewritten since this batch was read: a later read has it
                continue
            handed.append(row)
        if handed:
            self.sink.upsert(
                [r.id for r in handed],
                np.stack(vectors).astype(np.float32),
                [r.category for r in handed],
                [list(r.tags or []) for r in handed],
                [dict(r.attributes or {}) for r in handed],
            )
        for row in fresh:
            self._handed[row.id] = row.updated_at

    def _hand_deletions(self, cursor: _Cursor, horizon: datetime) -> None:
        assert self.sink is not None and cursor.deleted_at is not None
        with self.sessions() as session:
            rows = session.execute(
                select(ItemTombstone.item_id, ItemTombstone.deleted_at)
                .where(ItemTombstone.deleted_at >= cursor.deleted_at)
                .order_by(ItemTombstone.deleted_at)
            ).all()
        fresh = [r.item_id for r in rows if self._handed_deletes.get(r.item_id) != r.deleted_at]
        if fresh:
            self.sink.delete(fresh)
        self._handed_deletes = {r.item_id: r.deleted_at for r in rows}
        settled = [r.deleted_at for r in rows if r.deleted_at < horizon]
        if settled:
            cursor.deleted_at = max(settled)

    def close(self) -> None:
        self._poller.close(timeout_s=10)
        with self._lock:
            self.leadership.release()
            self.is_leader = False
