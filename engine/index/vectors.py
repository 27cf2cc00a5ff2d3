"""Item embeddings by id: from the published index, or encoded on demand for newer items."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import numpy as np
from cachetools import LRUCache
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.catalog.items import embedding_text
from engine.encoder.embedder import Embedder
from engine.index.artifact import LiveIndex
from engine.store.models import Item


class ItemVectors:
    """Looks up (dim,) float32 unit vectors for items.

    Items in the serving index cost a memory-mapped row read. Items added since the build are
    encoded from their SQL row (milliseconds each) and kept in a bounded cache, so an event or
    a session that names a brand-new item still counts.
    """

    def __init__(
        self, live: LiveIndex, embedder: Callable[[], Embedder], cache_size: int = 10_000
    ) -> None:
        """embedder: the encoder of the serving index (its `name` is the index's model name)."""
        self.live = live
        self._embedder = embedder
        # (space, item id) → its vector, for items newer than the index; least recently used
        # out first.
        self._cache: LRUCache[tuple[str | None, str], np.ndarray] = LRUCache(
            maxsize=max(cache_size, 1)
        )
        self._lock = threading.Lock()

    def get(self, session: Session, item_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """Vectors of the given items that exist; unknown ids are left out."""
        return self.lookup(session, item_ids)[1]

    def lookup(
        self, session: Session, item_ids: Iterable[str]
    ) -> tuple[str | None, dict[str, np.ndarray]]:
        """The space the vectors are in (the serving index's encoder; None before the first
        build) and the vectors of the given items that exist, every one in that space even
        while the serving index changes (an index swap between the two reads is read again).
        """
        ids = list(dict.fromkeys(item_ids))
        attempts = 0
        while True:
            artifact = self.live.get_or_none()
            space = artifact.model_name if artifact is not None else None
            out: dict[str, np.ndarray] = {}
            missing: list[str] = []
            for item_id in ids:
                row = artifact.row_of(item_id) if artifact is not None else None
                if row is not None and artifact is not None:
                    out[item_id] = np.asarray(artifact.vectors()[row])
                    continue
                with self._lock:
                    cached = self._cache.get((space, item_id))
                if cached is not None:
                    out[item_id] = cached
                else:
                    missing.append(item_id)
            if not missing:
                return space, out
            embedder = self._embedder()
            if space is not None and embedder.name != space and attempts < 2:
                attempts += 1
                continue  # the serving index changed since it was read: read it again
            out.update(self._encode(session, embedder, space, missing))
            return space, out

    def _encode(
        self, session: Session, embedder: Embedder, space: str | None, item_ids: list[str]
    ) -> dict[str, np.ndarray]:
        query = select(Item.id, Item.title, Item.text, Item.category, Item.tags).where(
            Item.id.in_(item_ids)
        )
        rows = session.execute(query).all()
        if not rows:
            return {}
        texts = [embedding_text(r.title, r.text, r.category, r.tags or []) for r in rows]
        vectors = embedder.encode(texts)
        out = {r.id: vectors[i] for i, r in enumerate(rows)}
        with self._lock:
            self._cache.update({(space, i): v for i, v in out.items()})
        return out

    def forget(self, item_ids: Iterable[str]) -> None:
        """Drop cached vectors of items whose text changed."""
        with self._lock:
            gone = set(item_ids)
            for key in [k for k in self._cache if k[1] in gone]:
                self._cache.pop(key, None)
