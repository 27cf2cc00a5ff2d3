"""The delta: items written since the serving version read the catalog, searchable within a
second, merged with the main index at query time, and folded in by the next build.

A background thread per process polls SQL for items updated since its watermark and embeds
those whose text changed into a small exact index (and a small BM25). Their rows in the main
index, if any, are shadowed (stale text). Every item written since the build also has its
fresh fields here (title, tags, attributes, ...), which serving reads instead of the index
version's. Deleted items need no tombstone list here: a search reads whether its candidates
still exist from SQL (with their popularity, in one query), so an item gone from SQL is gone
from results at once, in every process.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engine.catalog import INDEXED_COLUMNS, embedding_text, text_hash
from engine.index_store import IndexArtifact, ItemFields, LiveIndex
from engine.lexical import LexicalIndex
from engine.models import Item

log = logging.getLogger(__name__)


@dataclass
class DeltaSnapshot:
    """An immutable view the request path reads; refreshes replace it whole.

    ids, categories, texts, vectors and lexical cover the items re-embedded since the build
    (new, or with changed text); items holds the fields of every item written since.
    """

    base_version: str
    watermark: datetime
    ids: list[str] = field(default_factory=list)
    categories: list[str | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.float32))
    lexical: LexicalIndex | None = None
    items: dict[str, ItemFields] = field(default_factory=dict)
    _rows: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rows = {item_id: row for row, item_id in enumerate(self.ids)}

    @property
    def size(self) -> int:
        return len(self.ids)

    def row_of(self, item_id: str) -> int | None:
        return self._rows.get(item_id)

    def shadows(self) -> set[str]:
        return set(self._rows)

    def search(self, query: np.ndarray, k: int, category: str | None) -> list[tuple[str, float]]:
        """Exact top-k over the delta (it is small): (id, cosine), best first."""
        if not self.ids:
            return []
        scores = self.vectors @ query
        order = np.argsort(-scores, kind="stable")
        out = []
        for i in order:
            if category is None or self.categories[i] == category:
                out.append((self.ids[i], float(scores[i])))
                if len(out) == k:
                    break
        return out

    def lexical_search(self, text: str, k: int, category: str | None) -> list[tuple[str, float]]:
        if self.lexical is None:
            return []
        rows, scores = self.lexical.search(text, k)
        return [
            (self.ids[r], float(s))
            for r, s in zip(rows, scores, strict=True)
            if category is None or self.categories[r] == category
        ]


def _text_hash(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class Delta:
    """Follows the catalog between builds for one process."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        live: LiveIndex,
        embed: Callable[[list[str]], np.ndarray],
        poll_s: float,
    ) -> None:
        self.sessions = sessions
        self.live = live
        self.embed = embed
        self.poll_s = max(poll_s, 0.05)
        self._snapshot: DeltaSnapshot | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cache: dict[str, np.ndarray] = {}  # text hash → vector, within one base version

    def snapshot(self, artifact: IndexArtifact) -> DeltaSnapshot | None:
        """The delta for this serving version (None until the first refresh)."""
        if self._thread is None:
            self._start()
        snap = self._snapshot
        if snap is None or snap.base_version != artifact.version:
            return None
        return snap

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="delta", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # the next poll retries; searches keep the last snapshot
                log.exception("refreshing the delta failed")
            self._stop.wait(self.poll_s)

    def refresh(self) -> DeltaSnapshot | None:
        """Bring the delta up to date with SQL now; returns the new snapshot."""
        artifact = self.live.get_or_none()
        if artifact is None:
            return None
        with self._lock:
            old = self._snapshot
            if old is None or old.base_version != artifact.version:
                read_at = artifact.manifest.get("catalog_read_at")
                watermark = (
                    datetime.fromisoformat(read_at)
                    if read_at
                    else datetime.fromisoformat(artifact.manifest["built_at"]).replace(tzinfo=None)
                )
                old = DeltaSnapshot(artifact.version, watermark)
                self._cache.clear()
            query = select(*INDEXED_COLUMNS, Item.updated_at).where(
                Item.updated_at >= old.watermark
            )
            with self.sessions() as session:
                rows = session.execute(query).all()
            if not rows and old is self._snapshot:
                return old
            entries = {
                i: (c, t) for i, c, t in zip(old.ids, old.categories, old.texts, strict=True)
            }
            items = dict(old.items)
            watermark = old.watermark
            for row in rows:
                items[row.id] = ItemFields.from_columns(
                    row.title, row.category, row.tags, row.attributes, row.created_at
                )
                text = embedding_text(row.title, row.text, row.category, row.tags or [])
                main_row = artifact.row_of(row.id)
                unchanged = main_row is not None and artifact.text_hashes[main_row] == _build_hash(
                    artifact, text
                )
                if unchanged:
                    entries.pop(row.id, None)
                else:
                    entries[row.id] = (row.category, text)
                watermark = max(watermark, row.updated_at)
            ids = sorted(entries)
            texts = [entries[i][1] for i in ids]
            missing = [t for t in texts if _text_hash(t) not in self._cache]
            if missing:
                for t, v in zip(missing, self.embed(missing), strict=True):
                    self._cache[_text_hash(t)] = v
            dim = artifact.dim
            vectors = (
                np.stack([self._cache[_text_hash(t)] for t in texts]).astype(np.float32)
                if texts
                else np.zeros((0, dim), np.float32)
            )
            snap = DeltaSnapshot(
                base_version=artifact.version,
                watermark=watermark,
                ids=ids,
                categories=[entries[i][0] for i in ids],
                texts=texts,
                vectors=vectors,
                lexical=LexicalIndex.build_if_any(texts) if texts else None,
                items=items,
            )
            self._snapshot = snap
            if ids:
                log.info("delta for %s: %d items", artifact.version, len(ids))
            return snap

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _build_hash(artifact: IndexArtifact, text: str) -> str:
    return text_hash(artifact.manifest["model"]["name"], text)
