"""ANN backends behind one interface, picked by name (RECSEARCH_VECTOR_STORE).

Each backend's module is imported only when it is used: pymilvus is an optional extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.core.config import VECTOR_STORES, Settings
from engine.core.errors import ConfigError
from engine.index.ann.base import AnnIndex, ItemWriter, RowLabels

BACKENDS = VECTOR_STORES


def create_index(
    backend: str,
    dim: int,
    n_items: int,
    settings: Settings,
    labels: RowLabels | None = None,
) -> AnnIndex:
    """A new, empty index of the backend, sized for a catalog of n_items.

    labels: what each row will hold; Milvus needs them before add() (its rows are items),
    FAISS only for search_ids. A Milvus index is a new collection, not yet serving: publish
    it (IndexStore) or discard() it.
    """
    from engine.index.ann.faiss import choose_factory

    factory = choose_factory(settings, n_items)
    index: AnnIndex
    if backend == "faiss":
        from engine.index.ann.faiss import FaissIndex

        index = FaissIndex.create(dim, factory, settings)
    elif backend == "milvus":
        from engine.index.ann.milvus import MilvusIndex, milvus_index

        milvus_index(factory, settings)  # a ConfigError for a FAISS-only type, before a call
        if labels is None:
            raise ValueError("a Milvus index needs its rows' labels (item ids) before add()")
        index = MilvusIndex.create(dim, factory, settings)
    else:
        raise ConfigError(f"unknown ANN backend {backend!r}; known: {', '.join(BACKENDS)}")
    if labels is not None:
        index.label(labels)
    return index


def load_index(
    folder: Path, description: dict[str, Any], labels: RowLabels | None = None
) -> AnnIndex:
    """Open the index a manifest's "index" section describes, labelled when labels are given."""
    backend = description.get("backend")
    index: AnnIndex
    if backend == "faiss":
        from engine.index.ann.faiss import FaissIndex

        index = FaissIndex.load(folder, description)
    elif backend == "milvus":
        from engine.index.ann.milvus import MilvusIndex

        index = MilvusIndex.load(description)
    else:
        raise ConfigError(f"{folder}: unknown ANN backend {backend!r} in manifest.json")
    if labels is not None:
        index.label(labels)
    return index


def item_writer(settings: Settings) -> ItemWriter | None:
    """Where item upserts and deletes between builds go, or None when the store is fixed at
    its build (FAISS: the delta serves them). Connects on the first write, not here."""
    if settings.vector_store == "milvus":
        from engine.index.ann.milvus_writer import MilvusWriter

        return MilvusWriter.from_settings(settings)
    return None


__all__ = ["AnnIndex", "ItemWriter", "RowLabels", "create_index", "item_writer", "load_index"]
