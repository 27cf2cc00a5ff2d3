"""A version's chunks: the windows of long items after their first (engine.encoder.chunking),
with the item row each belongs to, and an ANN index over them.

An item's row vector is its first window, as it always was; its other windows are here. Its
query similarity is the best of all its windows (MaxP): best() gives that for candidates,
search() finds the items whose best window is near a query, whatever its place in the item.

Layout in the version folder (beside index.faiss, or a Milvus version's collection: these are
searched here, in every backend, like the version's BM25):
    chunks.npy        (m, dim) float32 unit vectors
    chunk_items.npy   (m,) int32 item row of each, non-decreasing
    chunks.faiss      the ANN index over them (flat, or HNSW past auto_flat_max_items)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.core.config import Settings

if TYPE_CHECKING:
    from engine.encoder.embedder import Embedder
from engine.index.ann.faiss import FaissIndex, choose_factory

VECTORS = "chunks.npy"
ITEMS = "chunk_items.npy"
INDEX = "chunks.faiss"


class Chunks:
    """The chunks of one version, row-aligned with nothing: each names its item's row."""

    def __init__(self, vectors: np.ndarray, items: np.ndarray, ann: FaissIndex, n_items: int):
        self.vectors = vectors
        self.items = items
        self.ann = ann
        # Chunks of item row r are starts[r]:starts[r + 1].
        self.starts = np.searchsorted(items, np.arange(n_items + 1)).astype(np.int64)
        # How many each row has, and a last row of none that row -1 (not in this version)
        # reads: best() looks rows up without masking them first.
        self._count = np.append(np.diff(self.starts), 0)

    @property
    def size(self) -> int:
        return int(self.items.shape[0])

    def best(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) the best similarity of each row's chunks to the query; -inf for a row
        with none (a short item, or -1: not in this version)."""
        out = np.full(len(rows), -np.inf, dtype=np.float32)
        if not len(rows) or not self.size:
            return out
        rows = np.asarray(rows, dtype=np.int64)
        counts = self._count[rows]
        has = counts > 0
        if not has.any():
            return out
        counts, lo = counts[has], self.starts[rows[has]]
        firsts = np.cumsum(counts) - counts  # where each row's chunks begin among the picks
        picks = np.repeat(lo - firsts, counts) + np.arange(int(counts.sum()))
        sims = np.take(np.asarray(self.vectors), picks, axis=0) @ query
        out[has] = np.maximum.reduceat(sims, firsts)
        return out

    def search(
        self, query: np.ndarray, k: int, allowed_rows: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Items whose best chunk is among the k chunks nearest the query: (item row, that
        chunk's similarity), best first, one entry an item. allowed_rows: item rows a
        filtered search may return (sorted)."""
        if not self.size or k <= 0:
            return []
        allowed = None
        if allowed_rows is not None:
            allowed = np.flatnonzero(np.isin(self.items, allowed_rows))
            if not allowed.size:
                return []
        scores, found = self.ann.search(query, k, allowed_rows=allowed)
        hit = found[0] >= 0
        rows, scores = self.items[found[0][hit]], scores[0][hit]
        # Best first, so each item's first hit is its best: the first of each row, in order.
        _, first = np.unique(rows, return_index=True)
        first.sort()
        return list(zip(rows[first].tolist(), scores[first].tolist(), strict=True))

    @classmethod
    def load(cls, folder: Path, section: dict[str, Any], n_items: int) -> Chunks:
        vectors = np.load(folder / VECTORS, mmap_mode="r")
        items = np.load(folder / ITEMS)
        return cls(vectors, items, FaissIndex.load(folder, section["index"]), n_items)


def build_index(vectors: np.ndarray, settings: Settings) -> FaissIndex:
    """The ANN index over a version's chunk vectors, chosen as for items of that count."""
    index = FaissIndex.create(vectors.shape[1], choose_factory(settings, len(vectors)), settings)
    if len(vectors):
        index.add(vectors)
    return index


def save(folder: Path, vectors: np.ndarray, items: np.ndarray, index: FaissIndex) -> dict[str, Any]:
    """Write a staged version's chunk files; the manifest's "chunks" section, less its spec."""
    for name, array in ((VECTORS, vectors.astype(np.float32)), (ITEMS, items.astype(np.int32))):
        with open(folder / name, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array))
            fh.flush()
            os.fsync(fh.fileno())
    return {
        "count": int(len(items)),
        "items_chunked": int(len(np.unique(items))),
        "index": index.save(folder, INDEX),
    }


def embed_chunks(
    embedder: Embedder, settings: Settings, texts: list[str]
) -> tuple[list[np.ndarray], str] | None:
    """Each text's chunk vectors ((c, dim); c = 0 for a text of one window) and the spec's tag
    they were cut by; None with chunking off."""
    chunker = embedder.chunker(settings)
    if chunker is None:
        return None
    pieces, owners = chunker.split(texts)
    vectors = embedder.encode(pieces) if pieces else np.zeros((0, embedder.dim), np.float32)
    return split_by_owner(vectors, owners, len(texts)), chunker.spec.tag()


def split_by_owner(vectors: np.ndarray, owners: list[int], n: int) -> list[np.ndarray]:
    """Rows of vectors grouped by owner (non-decreasing, each < n): n arrays (c_i, dim)."""
    bounds = np.searchsorted(np.asarray(owners, dtype=np.int64), np.arange(n + 1))
    return [vectors[bounds[i] : bounds[i + 1]] for i in range(n)]


def maxp(item_sims: np.ndarray, chunk_sims: np.ndarray, chunk_items: np.ndarray) -> np.ndarray:
    """Each item's best similarity over its row vector and its chunks (a copy)."""
    out = np.array(item_sims, dtype=np.float32)
    if len(chunk_items):
        np.maximum.at(out, chunk_items, chunk_sims.astype(np.float32))
    return out
