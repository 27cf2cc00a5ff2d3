"""The items one search reads: the published index version plus the delta written since.

Both hold each item's vector and the fields a search returns and ranks on, so serving reads
neither from SQL. Only items written after the delta last looked (within a poll), or a whole
version built before versions held fields, fall back to SQL and the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

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
        fresh = self.delta.items if self.delta is not None else {}
        # As a set difference (in C, a lookup of each id); nearly always empty.
        unknown = set(item_ids).difference(self.artifact.ann.rows, fresh)
        return [i for i in item_ids if i in unknown] if unknown else []

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

    def places(self, item_ids: Sequence[str]) -> Places:
        """Where each item's vector is: its delta row, else its row in the version (one
        lookup of each id, for vectors() and query_sims() alike)."""
        delta = self.delta if self.delta is not None and self.delta.size else None
        row_of = self.artifact.ann.rows.get
        if delta is None:
            return Places(None, np.array([row_of(i, -1) for i in item_ids], dtype=np.int64))
        fresh_of = delta.row_of
        fresh = np.array([-1 if (r := fresh_of(i)) is None else r for i in item_ids], np.int64)
        rows = np.array([row_of(i, -1) for i in item_ids], dtype=np.int64)
        rows[fresh >= 0] = -1  # the delta's vector replaces the version's row
        return Places(fresh, rows)

    def vectors(
        self, session: Session, item_ids: Sequence[str], places: Places | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """((n, dim) float32 unit vectors, (n,) bool found) for the given ids, in order;
        places: theirs, when the caller has them.

        The delta's vector for an item re-embedded since the build, else the version's row
        (read in row order from the memory map), else encoded from SQL (ItemVectors); rows
        of ids found nowhere are zero.
        """
        fresh, rows = places if places is not None else self.places(item_ids)
        out = np.zeros((len(item_ids), self.dim), dtype=np.float32)
        found = rows >= 0
        if fresh is not None and self.delta is not None:
            held_fresh = np.flatnonzero(fresh >= 0)
            out[held_fresh] = self.delta.vectors[fresh[held_fresh]]
            found[held_fresh] = True
        where = np.flatnonzero(rows >= 0)
        if where.size:
            where = where[np.argsort(rows[where])]  # sequential reads of the memory map
            # As a plain ndarray: indexing np.memmap itself builds a memmap subclass per call.
            held = np.asarray(self.artifact.vectors())
            out[where] = held[rows[where]]
        missing = np.flatnonzero(~found).tolist()
        if missing:
            encoded = self._fallback.get(session, [item_ids[i] for i in missing])
            for i in missing:
                vector = encoded.get(item_ids[i])
                if vector is not None:
                    out[i] = vector
                    found[i] = True
        return out, found

    def query_sims(
        self,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        query: np.ndarray,
        places: Places | None = None,
    ) -> np.ndarray:
        """(n,) each item's similarity to the query: the best of its vector (vectors, as
        vectors() gave them) and its chunks, the delta's for an item re-embedded since the
        build, else the version's (MaxP, engine.index.chunks); places: as vectors() took."""
        sims = vectors @ query
        chunks, delta = self.artifact.chunks, self.delta
        has_delta_chunks = delta is not None and delta.chunk_rows is not None
        if chunks is None and not has_delta_chunks:
            return sims
        fresh, rows = places if places is not None else self.places(item_ids)
        if fresh is not None and has_delta_chunks and delta is not None:
            held_fresh = np.flatnonzero(fresh >= 0)
            if held_fresh.size:
                best = delta.best_of(query)[fresh[held_fresh]]
                sims[held_fresh] = np.maximum(sims[held_fresh], best)
        if chunks is not None:
            sims = np.maximum(sims, chunks.best(query, rows))
        return sims


class Places(NamedTuple):
    """Where the vectors of some items are, aligned with them."""

    fresh: np.ndarray | None  # (n,) int64 the delta's row, -1 if not; None: the delta holds none
    rows: np.ndarray  # (n,) int64 the version's row, -1 if not the version's (or the delta's)


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
