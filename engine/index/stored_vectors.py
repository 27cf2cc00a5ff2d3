"""Item vectors stored in SQL (item_vectors): written once by the elected embedding follower,
read by every server, so no server runs the encoder for an item another one embedded.

A stored vector belongs to one text: readers ask for the text hash they computed from the
item's current row (engine.catalog.items.text_hash) and take the vector only if it matches.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.store.models import ItemVector

# Ids per IN (...) list: well under SQLite's bound variables limit, short statements in PG.
_CHUNK = 500
_DTYPE = np.dtype("<f4")  # the stored bytes: little-endian float32, whatever the host


def to_bytes(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=_DTYPE).tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    """(dim,) float32 (a copy: the row's bytes are not kept alive)."""
    return np.frombuffer(data, dtype=_DTYPE).astype(np.float32)


def stored_hashes(session: Session, item_ids: Sequence[str]) -> dict[str, str]:
    """item id → text hash of its stored vector, for the ids that have one."""
    out: dict[str, str] = {}
    for chunk in _chunks(item_ids):
        query = select(ItemVector.item_id, ItemVector.text_hash).where(
            ItemVector.item_id.in_(chunk)
        )
        out.update({row.item_id: row.text_hash for row in session.execute(query)})
    return out


def load_matching(session: Session, wanted: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Stored (dim,) float32 vectors of the items whose stored text hash is the wanted one
    (item id → text hash); items with none, or with one of another text, are left out."""
    out: dict[str, np.ndarray] = {}
    for chunk in _chunks(list(wanted)):
        query = select(ItemVector.item_id, ItemVector.text_hash, ItemVector.vector).where(
            ItemVector.item_id.in_(chunk)
        )
        for row in session.execute(query):
            if wanted[row.item_id] == row.text_hash:
                out[row.item_id] = from_bytes(row.vector)
    return out


def load_chunks(
    session: Session, wanted: Mapping[str, str], spec: str, dim: int
) -> dict[str, np.ndarray]:
    """The stored chunk vectors ((c, dim) float32; c = 0 for a text of one window) of the
    items whose stored text hash is the wanted one and whose chunks were cut as spec says
    (engine.encoder.chunking.ChunkSpec.tag); the others are left out."""
    out: dict[str, np.ndarray] = {}
    for chunk in _chunks(list(wanted)):
        query = select(ItemVector.item_id, ItemVector.text_hash, ItemVector.chunks).where(
            ItemVector.item_id.in_(chunk), ItemVector.chunk_spec == spec
        )
        for row in session.execute(query):
            if wanted[row.item_id] == row.text_hash and row.chunks is not None:
                out[row.item_id] = from_bytes(row.chunks).reshape(-1, dim)
    return out


def save(
    session: Session,
    item_ids: Sequence[str],
    text_hashes: Sequence[str],
    vectors: np.ndarray,
    model: str,
    now: datetime,
    chunks: tuple[Sequence[np.ndarray], str] | None = None,
) -> None:
    """Insert or replace the vectors ((n, dim) float32, row-aligned with the ids) in the
    caller's transaction. chunks: each item's chunk vectors ((c, dim), row-aligned) and the
    spec they were cut by; None: stored without (a reader wanting chunks embeds them)."""
    if not item_ids:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(ItemVector)
    stmt = stmt.on_conflict_do_update(
        index_elements=["item_id"],
        set_={
            "text_hash": stmt.excluded.text_hash,
            "model": stmt.excluded.model,
            "vector": stmt.excluded.vector,
            "updated_at": stmt.excluded.updated_at,
            "chunks": stmt.excluded.chunks,
            "chunk_spec": stmt.excluded.chunk_spec,
        },
    )
    extra: Sequence[np.ndarray | None] = [None] * len(item_ids) if chunks is None else chunks[0]
    spec = None if chunks is None else chunks[1]
    rows = [
        {
            "item_id": i,
            "text_hash": h,
            "model": model,
            "vector": to_bytes(v),
            "updated_at": now,
            "chunks": None if c is None else to_bytes(c),
            "chunk_spec": None if c is None else spec,
        }
        for i, h, v, c in zip(item_ids, text_hashes, vectors, extra, strict=True)
    ]
    session.execute(stmt, rows)


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield list(ids[start : start + _CHUNK])
