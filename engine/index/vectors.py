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
        self,
        live: LiveIndex,
        embedder: Callable[[str | None], Embedder],
        cache_size: int = 10_000,
    ) -> None:
        """embedder: the encoder called by an index's model name (None: before the first
        build), which encodes the items that index lacks."""
        self.live = live
        self._embedder = embedder
        # Item id → (space, its vector), for items newer than the index; least recently used
        # out first. A vector of another space (an index swap since) is encoded again.
        self._cache: LRUCache[str, tuple[str | None, np.ndarray]] = LRUCache(
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
        build) and the vectors of the given items that exist, every one in that space: the
        index is read once, and items it lacks are encoded by its own encoder."""
        artifact = self.live.get_or_none()
        space = artifact.model_name if artifact is not None else None
        out: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for item_id in dict.fromkeys(item_ids):
            row = artifact.row_of(item_id) if artifact is not None else None
            if row is not None and artifact is not None:
                out[item_id] = np.asarray(artifact.vectors()[row])
                continue
            with self._lock:
                cached = self._cache.get(item_id)
            if cached is not None and cached[0] == space:
                out[item_id] = cached[1]
            else:
                missing.append(item_id)
        if missing:
            out.update(self._encode(session, space, missing))
        return space, out

    def _encode(
        self, session: Session, space: str | None, item_ids: list[str]
    ) -> dict[str, np.ndarray]:
        query = select(Item.id, Item.title, Item.text, Item.category, Item.tags).where(
            Item.id.in_(item_ids)
        )
        rows = session.execute(query).all()
        if not rows:
            return {}
        texts = [embedding_text(r.title, r.text, r.category, r.tags or []) for r in rows]
        vectors = self._embedder(space).encode(texts)
        out = {r.id: vectors[i] for i, r in enumerate(rows)}
        with self._lock:
            self._cache.update({i: (space, v) for i, v in out.items()})
        return out

    def forget(self, item_ids: Iterable[str]) -> None:
        """Drop cached vectors of items whose text changed."""
        with self._lock:
            for item_id in item_ids:
                self._cache.pop(item_id, None)
