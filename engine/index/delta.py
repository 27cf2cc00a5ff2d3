"""The delta: items written since the serving version read the catalog, searchable within a
second, merged with the main index at query time, and folded in by the next build.

A background thread per process polls SQL for items updated since its watermark. Those whose
text changed take their vector from SQL (item_vectors), where the elected embedding follower
stored it (engine.index.embedding_follower): no server runs the encoder for them. They go into a
small exact index (and a small BM25), and their rows in the main index, if any, are shadowed
(stale text); an item whose vector is not stored yet (within a poll or two) is shadowed and
waits. Every item written since the build also has its fresh fields here (title, tags,
attributes, ...), which serving reads instead of the index version's. Deleted items are not
tracked here: the process's ItemWatch (engine.catalog.item_watch) follows the tombstones, and each
search reads those written since the watch last looked, so an item gone from SQL is gone
from results at once, in every process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engine.catalog.fields import ItemFields
from engine.catalog.items import INDEXED_COLUMNS, embedding_text, settled_before, text_hash
from engine.core.poller import Poller
from engine.encoder.chunking import ChunkSpec
from engine.index import stored_vectors
from engine.index.artifact import IndexArtifact, LiveIndex
from engine.index.chunks import maxp
from engine.index.lexical import LexicalIndex, best_first
from engine.store.models import Item

log = logging.getLogger(__name__)

PENDING_POLL_S = 0.05
# The resolution of updated_at (PostgreSQL's timestamp, SQLite's ISO text): no row is stamped
# between t and t + _TICK.
_TICK = timedelta(microseconds=1)


@dataclass
class DeltaSnapshot:
    """An immutable view the request path reads; refreshes replace it whole.

    ids, categories, texts, vectors and lexical cover the items re-embedded since the build
    (new, or with changed text); pending holds those whose new vector is not stored yet;
    items holds the fields of every item written since.
    """

    base_version: str
    watermark: datetime
    ids: list[str] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.float32))
    lexical: LexicalIndex | None = None
    items: dict[str, ItemFields] = field(default_factory=dict)
    pending: frozenset[str] = frozenset()
    # The windows of long items after their first (engine.index.chunks), cut as the serving
    # version's are, and the row of the item each belongs to.
    chunk_vectors: np.ndarray | None = None
    chunk_rows: np.ndarray | None = None
    _rows: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _shadows: frozenset[str] = field(default=frozenset(), init=False, repr=False)
    _by_category: dict[str | None, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _version_rows: frozenset[int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Once per snapshot (in the refresh thread), not per search: after a bulk update the
        # delta holds thousands of items.
        self._rows = {item_id: row for row, item_id in enumerate(self.ids)}
        self._shadows = frozenset(self._rows) | self.pending
        grouped: dict[str | None, list[int]] = {}
        for row, category in enumerate(self.categories):
            grouped.setdefault(category, []).append(row)
        self._by_category = {c: np.asarray(r, dtype=np.int64) for c, r in grouped.items()}

    @property
    def size(self) -> int:
        return len(self.ids)

    def row_of(self, item_id: str) -> int | None:
        return self._rows.get(item_id)

    def version_rows(self, artifact: IndexArtifact) -> frozenset[int]:
        """The rows that the items written since the build hold in the version (base_version's
        artifact), whose fields are stale: found once per snapshot, not per search (two
        threads may both find them: the same set)."""
        rows = self._version_rows
        if rows is None or artifact.version != self.base_version:
            row_of = artifact.ann.rows.get
            rows = frozenset(r for i in self.items if (r := row_of(i)) is not None)
            if artifact.version == self.base_version:
                self._version_rows = rows
        return rows

    def shadows(self) -> frozenset[str]:
        """Items whose row in the index version is stale: re-embedded, or about to be."""
        return self._shadows

    def search(self, query: np.ndarray, k: int, category: str | None) -> list[tuple[str, float]]:
        """Exact top-k over the delta: (id, cosine), best first, ties in row order.

        After a bulk update it holds thousands of items: the category's rows come from the
        snapshot's index of them, and only the top k are sorted.
        """
        if not self.ids or k <= 0:
            return []
        every = self.best_of(query)
        if category is None:
            rows = None
            scores = every
        else:
            rows = self._by_category.get(category)
            if rows is None:
                return []
            scores = every[rows]
        best = best_first(scores, k)
        picked = best if rows is None else rows[best]
        ids = self.ids
        return [(ids[r], s) for r, s in zip(picked.tolist(), scores[best].tolist(), strict=True)]

    def best_of(self, query: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Each row's similarity to the query: the best of its vector and its chunks (MaxP);
        rows: those rows only (default: all)."""
        if self.chunk_rows is None or not self.chunk_rows.size or self.chunk_vectors is None:
            return (self.vectors if rows is None else self.vectors[rows]) @ query
        best = maxp(self.vectors @ query, self.chunk_vectors @ query, self.chunk_rows)
        return best if rows is None else best[rows]

    def lexical_search(
        self,
        text: str,
        k: int,
        category: str | None,
        *,
        typo_tolerance: bool = True,
        base: LexicalIndex | None = None,
    ) -> list[tuple[str, float]]:
        """BM25 over the delta's items: (id, score), best first. base: the version's index,
        searched beside this one: a word it holds is no typo here (the delta's few words
        alone would "correct" it), and typos are corrected over both vocabularies."""
        if self.lexical is None:
            return []
        rows, scores = self.lexical.search(
            text, k, typo_tolerance=typo_tolerance, others=() if base is None else (base,)
        )
        return [
            (self.ids[r], float(s))
            for r, s in zip(rows, scores, strict=True)
            if category is None or self.categories[r] == category
        ]


def version_watermark(artifact: IndexArtifact) -> datetime:
    """When the version read the catalog: items written from then on are the delta's."""
    return manifest_watermark(artifact.manifest)


def manifest_watermark(manifest: Mapping[str, Any]) -> datetime:
    """version_watermark from a version's manifest alone."""
    read_at = manifest.get("catalog_read_at")
    if read_at:
        return datetime.fromisoformat(read_at)
    return datetime.fromisoformat(manifest["built_at"]).replace(tzinfo=None)


@dataclass(frozen=True)
class _Entry:
    category: str | None
    text: str
    text_hash: str


@dataclass
class _State:
    """What the delta knows of the items written since one version, between refreshes."""

    version: str
    watermark: datetime
    entries: dict[str, _Entry] = field(default_factory=dict)  # with a vector in hand
    pending: dict[str, _Entry] = field(default_factory=dict)  # waiting for the follower
    items: dict[str, ItemFields] = field(default_factory=dict)
    # Rows read past the settled horizon come back next poll: id → updated_at already seen.
    seen: dict[str, datetime] = field(default_factory=dict)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # text hash → (dim,) float32
    chunks: dict[str, np.ndarray] = field(default_factory=dict)  # text hash → (c, dim) float32


class Delta:
    """Follows the catalog between builds for one process."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        live: LiveIndex,
        poll_s: float,
        *,
        on_start: Callable[[], None] | None = None,
        catch_up: Callable[[], bool] | None = None,
    ) -> None:
        self.sessions = sessions
        self.live = live
        self.poll_s = max(poll_s, 0.05)
        self.on_start = on_start
        # Called when items wait for their vectors: the follower's catch_up, which embeds
        # them now and says so if this process holds the election (else does nothing).
        self.catch_up = catch_up
        self._snapshot: DeltaSnapshot | None = None
        self._state: _State | None = None
        self._lock = threading.Lock()
        # A failed refresh is retried at the next poll; searches keep the last snapshot.
        self._poller = Poller(
            "delta",
            self.refresh,
            self._next_poll_s,
            at_start=True,
            failed="refreshing the delta failed",
        )

    def snapshot(self, artifact: IndexArtifact) -> DeltaSnapshot | None:
        """The delta for this serving version (None until the first refresh)."""
        if not self._poller.started:
            self._start()
        snap = self._snapshot
        if snap is None or snap.base_version != artifact.version:
            return None
        return snap

    def _start(self) -> None:
        self._poller.start()
        if self.on_start is not None:
            self.on_start()

    def wake(self) -> None:
        """Refresh now rather than at the next poll (new vectors were just stored)."""
        self._poller.wake()

    def _next_poll_s(self) -> float:
        # Items seen but not yet embedded get their vectors within a follower poll: look
        # again soon, so they are searchable a poll after they were written, not two.
        snap = self._snapshot
        waiting = snap is not None and bool(snap.pending)
        return min(self.poll_s, PENDING_POLL_S) if waiting else self.poll_s

    def refresh(self) -> DeltaSnapshot | None:
        """Bring the delta up to date with SQL now; returns the new snapshot."""
        artifact = self.live.get_or_none()
        if artifact is None:
            return None
        with self._lock:
            state = self._state
            if state is None or state.version != artifact.version:
                state = _State(artifact.version, version_watermark(artifact))
            model = str(artifact.manifest["model"]["name"])
            query = select(*INDEXED_COLUMNS, Item.updated_at).where(
                Item.updated_at >= state.watermark
            )
            with self.sessions() as session:
                horizon = settled_before(session)
                rows = session.execute(query).all()
                fresh = [r for r in rows if state.seen.get(r.id) != r.updated_at]
                changed = _apply(state, artifact, model, fresh)
                changed = _load_pending(session, state, artifact) or changed
            if state.pending and self.catch_up is not None and self.catch_up():
                with self.sessions() as session:  # a new transaction sees what was stored
                    changed = _load_pending(session, state, artifact) or changed
            for row in fresh:
                state.seen[row.id] = row.updated_at
            newest = max((r.updated_at for r in rows), default=state.watermark)
            # Past the horizon a transaction still open may commit older rows: stop there.
            # Rows older than the horizon are final, those at `newest` too: the next poll
            # starts a tick after them. (At `newest` itself it read them again each poll,
            # 0.5 s apart, for as long as nothing newer came: after a bulk update in one
            # transaction, thousands of rows per poll in every process.)
            if newest < horizon:
                newest += _TICK
            state.watermark = max(state.watermark, min(newest, horizon))
            state.seen = {i: t for i, t in state.seen.items() if t >= state.watermark}
            self._state = state
            old = self._snapshot
            if not changed and old is not None and old.base_version == artifact.version:
                return old
            snap = _snapshot_of(state, artifact.dim)
            self._snapshot = snap
            if snap.ids or snap.pending:
                log.info(
                    "delta for %s: %d items, %d waiting for their vectors",
                    artifact.version,
                    len(snap.ids),
                    len(snap.pending),
                )
            return snap

    def close(self) -> None:
        self._poller.close()


def _apply(state: _State, artifact: IndexArtifact, model: str, rows: Sequence[Any]) -> bool:
    """Fold rows read from SQL into the state; True if any."""
    for row in rows:
        state.items[row.id] = ItemFields.from_columns(
            row.title, row.category, row.tags, row.attributes, row.created_at
        )
        text = embedding_text(row.title, row.text, row.category, row.tags or [])
        digest = text_hash(model, text)
        state.entries.pop(row.id, None)
        state.pending.pop(row.id, None)
        main_row = artifact.row_of(row.id)
        if main_row is not None and artifact.text_hashes[main_row] == digest:
            continue  # the version's row is current (only other fields changed)
        entry = _Entry(row.category, text, digest)
        if digest in state.vectors:
            state.entries[row.id] = entry
        else:
            state.pending[row.id] = entry
    return bool(rows)


def _load_pending(session: Session, state: _State, artifact: IndexArtifact) -> bool:
    """Take the stored vectors of pending items whose text they match, with their chunks
    when the version is chunked and they were cut alike; True if any."""
    if not state.pending:
        return False
    wanted = {i: e.text_hash for i, e in state.pending.items()}
    found = stored_vectors.load_matching(session, wanted)
    spec = ChunkSpec.from_dict(artifact.manifest.get("chunks"))
    chunks = stored_vectors.load_chunks(session, wanted, spec.tag(), artifact.dim) if spec else {}
    for item_id, vector in found.items():
        entry = state.pending.pop(item_id)
        state.vectors[entry.text_hash] = vector
        if item_id in chunks:
            state.chunks[entry.text_hash] = chunks[item_id]
        state.entries[item_id] = entry
    return bool(found)


def _snapshot_of(state: _State, dim: int) -> DeltaSnapshot:
    ids = sorted(state.entries)
    entries = [state.entries[i] for i in ids]
    texts = [e.text for e in entries]
    vectors = (
        np.stack([state.vectors[e.text_hash] for e in entries]).astype(np.float32)
        if ids
        else np.zeros((0, dim), np.float32)
    )
    pieces = [state.chunks.get(e.text_hash) for e in entries]
    counts = [0 if p is None else len(p) for p in pieces]
    chunk_rows = np.repeat(np.arange(len(entries)), counts) if sum(counts) else None
    return DeltaSnapshot(
        chunk_vectors=(
            np.concatenate([p for p in pieces if p is not None and len(p)]).astype(np.float32)
            if chunk_rows is not None
            else None
        ),
        chunk_rows=chunk_rows,
        base_version=state.version,
        watermark=state.watermark,
        ids=ids,
        categories=[e.category for e in entries],
        texts=texts,
        vectors=vectors,
        lexical=LexicalIndex.build_if_any(texts) if texts else None,
        items=dict(state.items),
        pending=frozenset(state.pending),
    )
