"""The interface every ANN backend implements: FAISS artifacts, or Milvus collections when a
catalog outgrows one machine's memory."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from engine.catalog.filters import Filters


@dataclass(frozen=True)
class RowLabels:
    """What each row of an index is: its item id and category, row-aligned (row r is ids[r]).

    tags and attributes travel with the rows only to stores that filter on them server-side
    (Milvus); FAISS filters by row numbers and ignores them.
    """

    ids: Sequence[str]
    categories: Sequence[str | None]
    tags: Sequence[Sequence[str]] | None = None
    attributes: Sequence[Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("categories", "tags", "attributes"):
            column = getattr(self, name)
            if column is not None and len(column) != n:
                raise ValueError(f"{len(column)} {name} for {n} ids")


class AnnIndex(ABC):
    """Vectors addressed by row number 0..n-1, and by item id once labelled; inner product
    over unit vectors (cosine)."""

    backend: str = ""
    # True when item upserts and deletes since the build go into this index (Milvus): a
    # search then finds new items here, not in the delta.
    is_live: bool = False
    _labels: RowLabels | None = None
    _category_rows: dict[str, np.ndarray] | None = None
    _row_of: dict[str, int] | None = None

    @property
    def read_your_writes(self) -> bool:
        """Whether a search sees every write acknowledged before it. A live index searched
        at a weaker consistency (Milvus's Bounded) may not show an item written a moment
        ago: the search path then takes written items from the delta, as for FAISS."""
        return True

    @abstractmethod
    def add(self, vectors: np.ndarray) -> None:
        """Append (n, dim) float32 unit vectors; they get the next row numbers (and, for a
        labelled index, the next labels)."""

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, *, allowed_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: (scores, rows), each (n_queries, k); missing slots have row -1.

        allowed_rows: sorted int64 row numbers; when given, only those rows can be returned.
        A live index leaves out items added after the build (they have no row): search_ids
        finds them.
        """

    def search_ids(
        self,
        query: np.ndarray,
        k: int,
        *,
        category: str | None = None,
        where: Filters | None = None,
    ) -> list[tuple[str, float]]:
        """The k items nearest one (dim,) query: (item id, cosine), best first.

        category: only items of that category. where: a search's filters, which a live
        index applies itself (Milvus: an expression); this default ignores them, and the
        caller checks every candidate against them anyway. Needs labels. A live index also returns
        items upserted since the build and never returns deleted ones; this default (row
        search mapped through the labels) serves an index fixed at its build.
        """
        labels = self.labels
        allowed = None
        if category is not None:
            allowed = self.rows_for_category(category)
            if allowed.size == 0:
                return []
        scores, rows = self.search(query.reshape(1, -1), k, allowed_rows=allowed)
        return [
            (labels.ids[r], sc)
            for sc, r in zip(scores[0].tolist(), rows[0].tolist(), strict=True)
            if r >= 0
        ]

    def label(self, labels: RowLabels) -> None:
        """Say which item each row holds (row-aligned with the vectors added)."""
        self._labels = labels
        self._category_rows = None
        self._row_of = None

    @property
    def labels(self) -> RowLabels:
        if self._labels is None:
            raise ValueError(f"this {self.backend} index has no row labels: call label() first")
        return self._labels

    def rows_for_category(self, category: str) -> np.ndarray:
        """Sorted int64 rows of the category (empty for an unknown one)."""
        if self._category_rows is None:
            by_cat: dict[str, list[int]] = {}
            for row, cat in enumerate(self.labels.categories):
                if cat is not None:
                    by_cat.setdefault(cat, []).append(row)
            self._category_rows = {c: np.asarray(r, dtype=np.int64) for c, r in by_cat.items()}
        return self._category_rows.get(category, np.empty(0, dtype=np.int64))

    def row_of(self, item_id: str) -> int | None:
        """The item's row at the build, or None."""
        return self.rows.get(item_id)

    @property
    def rows(self) -> dict[str, int]:
        """Every item's row at the build, by id (built on first use)."""
        if self._row_of is None:
            self._row_of = {item_id: row for row, item_id in enumerate(self.labels.ids)}
        return self._row_of

    @abstractmethod
    def save(self, folder: Path) -> dict[str, Any]:
        """Write the index files into folder; return the manifest's "index" section."""

    def discard(self) -> None:
        """Drop what a build made outside its staging folder (a Milvus collection) when the
        build is not published. FAISS keeps everything in the folder: nothing to do."""
        return None

    @property
    @abstractmethod
    def size(self) -> int:
        """Rows at the build (a live index may hold more items since)."""

    @property
    @abstractmethod
    def description(self) -> dict[str, Any]:
        """Backend, type, factory string and parameters, as recorded in manifest.json."""


class ItemWriter(ABC):
    """Writes between builds into the serving vector store (Milvus: the alias's collection).

    Called with vectors that were computed once (by the elected follower) and stored; a
    store fixed at its build (FAISS) has no writer: the delta serves new items there.
    Both calls are idempotent, so handing the same items again (after a restart, or to a
    collection published since) is harmless.
    """

    @abstractmethod
    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        categories: Sequence[str | None],
        tags: Sequence[Sequence[str]] | None = None,
        attributes: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Insert or replace items: (n, dim) float32 unit vectors, row-aligned with ids."""

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None:
        """Remove items; unknown ids are ignored."""
