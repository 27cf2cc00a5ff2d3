"""Item upserts and deletes written straight into the serving Milvus collection between builds
(the embedding follower's vector sink for RECSEARCH_VECTOR_STORE=milvus)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.core.config import Settings
from engine.index.ann.base import ItemWriter
from engine.index.ann.milvus import WRITE_CHUNK
from engine.index.ann.milvus_client import client, remember
from engine.index.ann.milvus_rows import layout_of, records


class MilvusWriter(ItemWriter):
    """Upserts and deletes through the alias, i.e. into whichever collection serves now."""

    def __init__(self, uri: str, alias: str) -> None:
        self.uri = uri
        self.alias = alias

    @property
    def client(self) -> Any:
        # On first write, not at construction: a process that never writes (a CLI command
        # while a server holds Milvus Lite) never opens it.
        return client(self.uri)

    @classmethod
    def from_settings(cls, settings: Settings) -> MilvusWriter:
        remember(settings)
        return cls(settings.milvus_target, settings.milvus_collection)

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        categories: Sequence[str | None],
        tags: Sequence[Sequence[str]] | None = None,
        attributes: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        if len(ids) != vectors.shape[0] or len(ids) != len(categories):
            raise ValueError(f"{len(ids)} ids, {vectors.shape[0]} vectors, {len(categories)} cats")
        written_at = time.time_ns() // 1_000_000
        # The layout of the collection the alias names now (a rollback may move it to one
        # an older recsearch made).
        layout = layout_of(self.client, self.alias)
        for lo in range(0, len(ids), WRITE_CHUNK):
            hi = lo + WRITE_CHUNK
            self.client.upsert(
                self.alias,
                records(
                    ids[lo:hi],
                    vectors[lo:hi],
                    categories[lo:hi],
                    None if tags is None else tags[lo:hi],
                    None if attributes is None else attributes[lo:hi],
                    written_at=written_at,
                    layout=layout,
                ),
            )

    def delete(self, ids: Sequence[str]) -> None:
        for lo in range(0, len(ids), WRITE_CHUNK):
            self.client.delete(self.alias, ids=list(ids[lo : lo + WRITE_CHUNK]))
