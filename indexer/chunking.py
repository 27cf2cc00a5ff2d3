"""A build's chunks: the windows of long items after their first (engine.encoder.chunking),
embedded like the items' own texts, reused where an earlier cut of the same text is at hand.

Reused, for an item whose text hash is unchanged: the previous version's chunks when it was
cut by the same spec, else those the embedding follower stored with the item's vector. The
rest are cut and encoded by the build's embedding site (here, or a Ray pool).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from engine.core.config import Settings
from engine.core.errors import InvalidInput, NotFound, NotReady
from engine.encoder.chunking import ChunkSpec
from engine.encoder.embedder import Embedder
from engine.index import chunks as chunk_files
from engine.index import stored_vectors
from engine.index.ann.faiss import FaissIndex, exact_top_k
from engine.index.artifact import IndexStore
from indexer.embedding import CatalogRows, EmbeddingSite
from indexer.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class ChunkBuild:
    spec: ChunkSpec
    vectors: np.ndarray  # (m, dim)
    items: np.ndarray  # (m,) item row, non-decreasing
    encoded: int
    reused: int
    seconds: float
    index: FaissIndex | None = None
    recall_at_10: float | None = None

    def save(self, folder: Any) -> dict[str, Any]:
        """The chunk files in the staged version; its manifest's "chunks" section."""
        assert self.index is not None
        return {
            **self.spec.to_dict(),
            **chunk_files.save(folder, self.vectors, self.items, self.index),
            "encoded": self.encoded,
            "reused": self.reused,
            "embed_seconds": round(self.seconds, 3),
            "recall_at_10": self.recall_at_10,
        }


def chunk_catalog(
    rows: CatalogRows,
    embedder: Embedder,
    site: EmbeddingSite,
    store: IndexStore,
    previous: dict[str, Any] | None,
    session: Session,
    progress: Progress,
    settings: Settings,
) -> ChunkBuild | None:
    """Every item's chunk vectors, in row order; None with chunking off."""
    chunker = embedder.chunker(settings)
    if chunker is None:
        return None
    spec = chunker.spec
    started = time.perf_counter()
    n = len(rows.ids)
    known = _previous_chunks(store, previous, spec, embedder)
    hashes = rows.text_hashes
    missing = {rows.ids[r]: hashes[r] for r in range(n) if hashes[r] not in known}
    stored = stored_vectors.load_chunks(session, missing, spec.tag(), embedder.dim)
    per_row: list[np.ndarray | None] = []
    todo_texts: list[str] = []
    todo_owner: list[int] = []
    progress("chunk", 0, n)
    for r in range(n):
        found = known.get(rows.text_hashes[r])
        if found is None:
            found = stored.get(rows.ids[r])
        per_row.append(found)
        if found is None:
            pieces = chunker.extra(rows.texts[r])
            todo_texts += pieces
            todo_owner += [r] * len(pieces)
            if not pieces:
                per_row[r] = np.zeros((0, embedder.dim), np.float32)
    reused = sum(len(p) for p in per_row if p is not None)
    done = 0

    def advance(k: int) -> None:
        nonlocal done
        done += k
        progress("chunk", done, len(todo_texts))

    if todo_texts:
        log.info("embedding %d windows of %d long items", len(todo_texts), len(set(todo_owner)))
        encoded = site.encode(todo_texts, progress=advance)
        for r, group in _grouped(encoded, todo_owner):
            per_row[r] = group
    counts = [len(p) if p is not None else 0 for p in per_row]
    vectors = (
        np.concatenate([p for p in per_row if p is not None and len(p)]).astype(np.float32)
        if sum(counts)
        else np.zeros((0, embedder.dim), np.float32)
    )
    items = np.repeat(np.arange(n, dtype=np.int32), counts)
    return ChunkBuild(spec, vectors, items, len(todo_texts), reused, time.perf_counter() - started)


def index_chunks(build: ChunkBuild, settings: Settings, sample: int) -> None:
    """The ANN index over the chunks, and its recall@10 against exact search on a sample of
    them (None when it is exact)."""
    build.index = chunk_files.build_index(build.vectors, settings)
    if build.index.description["is_exact"] or not len(build.vectors):
        return
    rng = np.random.default_rng(0)
    picks = rng.choice(len(build.vectors), min(sample, len(build.vectors)), replace=False)
    queries = build.vectors[picks]
    _, exact = exact_top_k(queries, build.vectors, 10)
    _, approx = build.index.search(queries, 10)
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True)]
    build.recall_at_10 = round(float(np.sum(hits)) / float(exact.size), 4)


def _previous_chunks(
    store: IndexStore, previous: dict[str, Any] | None, spec: ChunkSpec, embedder: Embedder
) -> dict[str, np.ndarray]:
    """Text hash → (c, dim) chunk vectors of the newest kept version cut alike by this
    encoder (the current one first: a rollback, or a build without chunking, may stand
    between); a version's short items hold c = 0."""
    from engine.encoder.prompts import built_document_prompt

    def alike(manifest: dict[str, Any]) -> bool:
        return (
            ChunkSpec.from_dict(manifest.get("chunks")) == spec
            and manifest["model"]["name"] == embedder.name
            and built_document_prompt(manifest) == embedder.prompts.document
        )

    candidates = [previous] if previous else []
    for version in reversed(store.versions()):
        try:
            candidates.append(store.manifest(version))
        except (NotFound, InvalidInput, OSError, ValueError):
            continue
    previous = next((m for m in candidates if alike(m)), None)
    if previous is None:
        return {}
    try:
        old = store.load(previous["version"])
    except NotReady as exc:  # e.g. its Milvus collection was dropped: cut everything again
        log.warning("cannot reuse the chunks of %s: %s", previous["version"], exc)
        return {}
    out: dict[str, np.ndarray] = {}
    empty = np.zeros((0, embedder.dim), np.float32)
    chunks = old.chunks
    for row, digest in enumerate(old.text_hashes):
        if chunks is None:
            out[digest] = empty
        else:
            out[digest] = np.asarray(chunks.vectors[chunks.starts[row] : chunks.starts[row + 1]])
    return out


def _grouped(vectors: np.ndarray, owners: list[int]) -> list[tuple[int, np.ndarray]]:
    out: list[tuple[int, np.ndarray]] = []
    start = 0
    for i in range(1, len(owners) + 1):
        if i == len(owners) or owners[i] != owners[start]:
            out.append((owners[start], vectors[start:i]))
            start = i
    return out
