"""The items one search reads: the published index version plus the delta written since.

Both hold each item's vector and the fields a search returns and ranks on, so serving reads
neither from SQL. Only items written after the delta last looked (within a poll), or a whole
version built before versions held fields, fall back to SQL and the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.catalog.fields import ItemFields
from engine.index.artifact import IndexArtifact
from engine.index.delta import DeltaSnapshot
from engine.index.lexical import LexicalIndex
from engine.index.vectors import ItemVectors
from engine.store.models import Item


class Corpus:
    """One consistent view for the length of a search: which version, which delta."""

    def __init__(
        self, artifact: IndexArtifact, delta: DeltaSnapshot | None, fallback: ItemVectors
    ) -> None:
        self.artifact = artifact
        self.delta = delta
        self._fallback = fallback

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def dim(self) -> int:
        return self.artifact.dim

    def delta_lexical(self) -> list[LexicalIndex]:
        """The delta's BM25 index (none or one): searched beside the version's, so that each
        sees the other's words when correcting typos (engine.index.typos)."""
        delta = self.delta
        return [delta.lexical] if delta is not None and delta.lexical is not None else []

    def unknown(self, item_ids: Sequence[str]) -> list[str]:
        """The ids neither the version nor its delta holds (only SQL can say if they exist)."""
        rows = self.artifact.ann.rows
        fresh = self.delta.items if self.delta is not None else {}
        return [i for i in item_ids if i not in rows and i not in fresh]

    def fields(self, session: Session, item_ids: Sequence[str]) -> dict[str, ItemFields]:
        """Fields of the given items that exist: the delta's for items written since the
        build, else the version's, else (written within the last poll) SQL's."""
        out: dict[str, ItemFields] = {}
        missing = []
        fresh = self.delta.items if self.delta is not None else {}
        held = self.artifact.items
        row_of = self.artifact.ann.rows.get  # per candidate: no method layers in between
        for item_id in item_ids:
            found = fresh.get(item_id)
            if found is None and held is not None:
                row = row_of(item_id)
                if row is not None:
                    found = held[row]
            if found is None:
                missing.append(item_id)
            else:
                out[item_id] = found
        if missing:
            out.update(_load_fields(session, missing))
        return out

    def vectors(self, session: Session, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """((n, dim) float32 unit vectors, (n,) bool found) for the given ids, in order.

        The delta's vector for an item re-embedded since the build, else the version's row
        (read in row order from the memory map), else encoded from SQL (ItemVectors); rows
        of ids found nowhere are zero.
        """
        n = len(item_ids)
        out = np.zeros((n, self.dim), dtype=np.float32)
        found = np.zeros(n, dtype=bool)
        positions: list[int] = []
        rows: list[int] = []
        missing: list[int] = []
        delta = self.delta if self.delta is not None and self.delta.size else None
        row_of = self.artifact.ann.rows.get
        for i, item_id in enumerate(item_ids):
            fresh = delta.row_of(item_id) if delta is not None else None
            if fresh is not None and delta is not None:
                out[i] = delta.vectors[fresh]
                found[i] = True
                continue
            row = row_of(item_id)
            if row is None:
                missing.append(i)
            else:
                positions.append(i)
                rows.append(row)
        if rows:
            order = np.argsort(rows)  # sequential reads of the memory map
            where = np.asarray(positions)[order]
            # As a plain ndarray: indexing np.memmap itself builds a memmap subclass per call.
            held = np.asarray(self.artifact.vectors())
            out[where] = held[np.asarray(rows)[order]]
            found[where] = True
        if missing:
            encoded = self._fallback.get(session, [item_ids[i] for i in missing])
            for i in missing:
                vector = encoded.get(item_ids[i])
                if vector is not None:
                    out[i] = vector
                    found[i] = True
        return out, found

    def query_sims(
        self, item_ids: Sequence[str], vectors: np.ndarray, query: np.ndarray
    ) -> np.ndarray:
        """(n,) each item's similarity to the query: the best of its vector (vectors, as
        vectors() gave them) and its chunks, the delta's for an item re-embedded since the
        build, else the version's (MaxP, engine.index.chunks)."""
        sims = vectors @ query
        chunks, delta = self.artifact.chunks, self.delta
        has_delta_chunks = delta is not None and delta.chunk_rows is not None
        if chunks is None and not has_delta_chunks:
            return sims
        rows = np.full(len(item_ids), -1, dtype=np.int64)
        row_of = self.artifact.ann.rows.get
        fresh_best: np.ndarray | None = None  # the delta's MaxP, for all its rows at once
        for i, item_id in enumerate(item_ids):
            fresh = delta.row_of(item_id) if delta is not None else None
            if fresh is not None and delta is not None:
                if has_delta_chunks:
                    if fresh_best is None:
                        fresh_best = delta.best_of(query)
                    sims[i] = max(sims[i], float(fresh_best[fresh]))
                continue
            row = row_of(item_id)
            if row is not None:
                rows[i] = row
        if chunks is not None:
            sims = np.maximum(sims, chunks.best(query, rows))
        return sims


def _load_fields(session: Session, item_ids: list[str]) -> dict[str, ItemFields]:
    query = select(
        Item.id, Item.title, Item.category, Item.tags, Item.attributes, Item.created_at
    ).where(Item.id.in_(item_ids))
    return {
        row.id: ItemFields.from_columns(
            row.title, row.category, row.tags, row.attributes, row.created_at
        )
        for row in session.execute(query)
    }
