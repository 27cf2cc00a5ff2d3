"""A build's catalog snapshot and its vectors: every item's embedding text read once, then
embedded in batches, reusing the vectors of texts the previous version already holds.

The texts left to embed go to an EmbeddingSite: this process's Embedder (LocalEmbedding), or
a Ray cluster's actor pool (indexer.ray_embedding.RayEmbedding, RECSEARCH_RAY_ADDRESS).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.catalog.fields import ItemFields
from engine.catalog.items import (
    INDEXED_COLUMNS,
    embedding_text,
    text_hash,
)
from engine.core.errors import NotReady
from engine.encoder.embedder import Embedder
from engine.encoder.prompts import built_document_prompt
from engine.index import stored_vectors
from engine.index.artifact import IndexStore
from engine.store.models import Item
from indexer.progress import Progress

log = logging.getLogger(__name__)


class EmbeddingSite(Protocol):
    """Where a build's new texts are embedded; describe() is the manifest's "embedding"."""

    def encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class LocalEmbedding:
    """This process's Embedder, on its device and threads."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.items = 0

    def encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        vectors = self.embedder.encode(texts, progress=progress)
        self.items += len(texts)
        return vectors

    def describe(self) -> dict[str, Any]:
        return {
            "where": "local",
            "host": platform.node(),
            "device": self.embedder.device,
            "items": self.items,
        }


@dataclass
class CatalogRows:
    ids: list[str]
    categories: list[str | None]
    texts: list[str]
    text_hashes: list[str]
    items: list[ItemFields]  # what searches return and rank on, served from the artifact

    def fingerprint(self) -> str:
        """Changes with anything the version holds: text (hence vectors), category, and the
        fields served from it (attributes, created_at; title and tags are in the text)."""
        digest = hashlib.sha256()
        for item_id, cat, th, item in zip(
            self.ids, self.categories, self.text_hashes, self.items, strict=True
        ):
            served = json.dumps([item.attributes, str(item.created_at)], sort_keys=True)
            digest.update(f"{item_id}\0{cat or ''}\0{th}\0{served}\n".encode())
        return digest.hexdigest()


def load_catalog(session: Session, model_name: str, progress: Progress) -> CatalogRows:
    rows = CatalogRows([], [], [], [], [])
    query = select(*INDEXED_COLUMNS).order_by(Item.id)
    progress("load", 0, 0)
    for item_id, title, text, category, tags, attributes, created_at in session.execute(
        query.execution_options(yield_per=5_000)
    ):
        content = embedding_text(title, text, category, tags or [])
        rows.ids.append(item_id)
        rows.categories.append(category)
        rows.texts.append(content)
        rows.text_hashes.append(text_hash(model_name, content))
        rows.items.append(ItemFields.from_columns(title, category, tags, attributes, created_at))
    progress("load", len(rows.ids), len(rows.ids))
    return rows


def embed_catalog(
    rows: CatalogRows,
    embedder: Embedder,
    store: IndexStore,
    previous: dict[str, Any] | None,
    progress: Progress,
    session: Session,
    site: EmbeddingSite | None = None,
) -> tuple[np.ndarray, int, float]:
    """All item vectors, reusing the previous version's for texts that did not change and
    those the embedding follower stored since (so a rebuild after live writes encodes none).
    Neither is reused when the previous version's items had another document prompt: the
    stored vectors carry no prompt, and may be from before the change.

    The rest are encoded by site (default: embedder, here); (vectors, reused, seconds).
    """
    site = site or LocalEmbedding(embedder)
    n = len(rows.ids)
    vectors = np.empty((n, embedder.dim), dtype=np.float32)
    todo = list(range(n))
    reused = 0
    old = None
    same_prompt = previous is None or built_document_prompt(previous) == embedder.prompts.document
    if not same_prompt:
        log.info(
            "the document prompt changed from %r to %r: every item is encoded again",
            built_document_prompt(previous or {}),
            embedder.prompts.document,
        )
    if previous and previous["model"]["name"] == embedder.name and same_prompt:
        try:
            old = store.load(previous["version"])
        except NotReady as exc:  # e.g. its Milvus collection was dropped: embed everything
            log.warning("cannot reuse the vectors of %s: %s", previous["version"], exc)
    if old is not None:
        if old.dim == embedder.dim:
            old_rows = {h: r for r, h in enumerate(old.text_hashes)}
            old_vectors = old.vectors()
            todo = []
            for row, text_hash in enumerate(rows.text_hashes):
                old_row = old_rows.get(text_hash)
                if old_row is None:
                    todo.append(row)
                else:
                    vectors[row] = old_vectors[old_row]
            reused = n - len(todo)
    if todo and same_prompt:
        found = stored_vectors.load_matching(
            session, {rows.ids[r]: rows.text_hashes[r] for r in todo}
        )
        kept = []
        for r in todo:
            vector = found.get(rows.ids[r])
            if vector is not None and vector.shape[0] == embedder.dim:
                vectors[r] = vector
            else:
                kept.append(r)
        reused += len(todo) - len(kept)
        todo = kept
    done = reused
    progress("embed", done, n)

    def advance(k: int) -> None:
        nonlocal done
        done += k
        progress("embed", done, n)

    started = time.perf_counter()
    if todo:
        vectors[todo] = site.encode([rows.texts[r] for r in todo], progress=advance)
    return vectors, reused, time.perf_counter() - started
