"""Versioned index artifacts: the ANN index, the row → item map with each item's fields, the
vectors and BM25, published through engine.index.versions.

Layout of one version under settings.index_dir:
    v000007/           manifest.json, index.faiss (FAISS; a Milvus version's manifest names
                       its collection instead), items.json (row → id, category, text hash,
                       and what a search returns and ranks on: title, tags, attributes,
                       created_at), vectors.npy ((n, dim) float32 unit vectors: reused by the
                       next build), lexical/ (BM25), chunks*.npy / chunks.faiss (the windows
                       of long items after their first: engine.index.chunks)
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.catalog.facets import FacetColumns
from engine.catalog.fields import ItemFields
from engine.catalog.filters import Columns, Schema
from engine.core.errors import InvalidInput, NotFound, NotReady, Problem
from engine.core.files import write_json_durably
from engine.index.ann import AnnIndex, RowLabels, load_index
from engine.index.chunks import Chunks
from engine.index.lexical import LexicalIndex
from engine.index.live_version import LiveVersion
from engine.index.versions import MANIFEST, VersionStore

log = logging.getLogger(__name__)


ITEMS = "items.json"
_FILTERS_LOCK = threading.Lock()  # one build of a version's filter columns at a time
# numpy reads an array file's header with ast.literal_eval, and CPython 3.11 keeps the AST
# builder's recursion depth in state that threads share (gh-106905): two threads loading at once
# (a request's first read of a new version's vectors, and the delta's thread loading that
# version) can fail with "SystemError: AST constructor recursion depth mismatch". Arrays are
# loaded once per version per process, so taking turns costs nothing.
_LOADING = threading.Lock()


VECTORS = "vectors.npy"


@dataclass
class IndexArtifact:
    """A loaded index version: the ANN index plus its row → item map."""

    version: str
    folder: Path
    manifest: dict[str, Any]
    ann: AnnIndex  # labelled with ids and categories
    ids: list[str]
    categories: list[str | None]
    text_hashes: list[str]
    _vectors: np.ndarray | None = None
    lexical: LexicalIndex | None = None
    # Row-aligned with ids; None for a version built before items carried their fields.
    items: list[ItemFields] | None = None
    # The windows of long items after their first (engine.index.chunks); None: not chunked.
    chunks: Chunks | None = None
    _filter_cache: tuple[Schema, Columns] | None = field(default=None, repr=False)
    _facet_cache: FacetColumns | None = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        """The encoder that built this version (RECSEARCH_MODEL's name, or a tuned one's)."""
        return str(self.manifest["model"]["name"])

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["dimension"])

    def rows_for_category(self, category: str) -> np.ndarray:
        """Sorted int64 rows of the category (empty for an unknown one)."""
        return self.ann.rows_for_category(category)

    def vectors(self) -> np.ndarray:
        """(n, dim) float32 unit vectors, memory-mapped read-only."""
        if self._vectors is None:
            with _LOADING:
                if self._vectors is None:
                    self._vectors = np.load(self.folder / VECTORS, mmap_mode="r")
        return self._vectors

    def row_of(self, item_id: str) -> int | None:
        """The item's row in this version, or None if it was not in the catalog at build."""
        return self.ann.row_of(item_id)

    def filter_schema(self, fresh: Mapping[str, ItemFields] | None = None) -> Schema:
        """What can be filtered on: this version's items, plus the attributes that items
        written since the build (the delta's fresh fields) brought."""
        schema = self._filters()[0]
        return schema.with_items(fresh.values()) if fresh else schema

    def filter_columns(self) -> Columns:
        """This version's filterable fields, as the first stage reads them."""
        return self._filters()[1]

    def facet_columns(self) -> FacetColumns:
        """This version's items as facet counts read them (built on first use)."""
        found = self._facet_cache
        if found is None:
            self._filters()  # raises for a version without item fields
            with _FILTERS_LOCK:
                found = self._facet_cache
                if found is None:
                    found = FacetColumns(self.items or [])
                    self._facet_cache = found
        return found

    def _filters(self) -> tuple[Schema, Columns]:
        """Built on the first filtered search of this version, then kept with it."""
        found = self._filter_cache
        if found is None:
            if self.items is None:
                raise InvalidInput(
                    f"index version {self.version} predates filters (it holds no item "
                    "fields): rebuild the index to filter",
                    [Problem("filters", "this index version cannot filter; rebuild it")],
                )
            with _FILTERS_LOCK:
                found = self._filter_cache
                if found is None:
                    found = (Schema.from_items(self.items), Columns(self.items))
                    self._filter_cache = found
        return found


class IndexStore(VersionStore):
    """The index folder: versions of ANN index + row map + vectors + BM25.

    A version whose vectors live in Milvus names its collection in the manifest; making it
    current moves the Milvus alias too (under the same lock, alias first: if CURRENT, or the
    database's pointer, cannot be written the alias moves back), and pruning it drops its
    collection. Processes that only follow a publish or a rollback never move the alias.
    """

    kind = "index version"

    def _make_serving(self, version: str) -> Callable[[], None]:
        manifest = self.manifest(version)
        index = manifest.get("index") or {}
        if index.get("backend") != "milvus":
            return lambda: None
        from engine.index.ann.milvus_alias import make_serving

        return make_serving(index, manifest.get("catalog_read_at"))

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the current one, with the Milvus
        collections they name."""
        collections: dict[str, dict[str, Any]] = {}
        for version in self.versions():
            try:
                index = self.manifest(version)["index"]
            except (NotFound, KeyError, ValueError):
                continue
            if index.get("backend") == "milvus":
                collections[version] = index
        doomed = super().prune(keep)
        # The version this store's last publish or rollback replaced may still serve other
        # processes until they next poll CURRENT: a folder they memory-mapped outlives its
        # deletion, a dropped collection does not. Its collection is left for the sweep of
        # collections no version names (a day later, at a build).
        dropping = [v for v in doomed if v != self._replaced]
        by_place: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for version in dropping:
            if version in collections:
                index = collections[version]
                by_place.setdefault((index["uri"], index["alias"]), []).append(index)
        if by_place:
            from engine.index.ann.milvus_alias import drop_collections

            kept = [c["collection"] for v, c in collections.items() if v not in dropping]
            for gone in by_place.values():
                drop_collections(gone[0], [g["collection"] for g in gone], keep=kept)
        return doomed

    def load(self, version: str | None = None) -> IndexArtifact:
        """Load a version (default: CURRENT); raises NotReady when nothing is published."""
        if version is None:
            version = self.current_version()
            if version is None:
                raise NotReady(
                    "no index is published yet: run `recsearch build` after `recsearch ingest`"
                )
        folder = self.local_folder(version)
        manifest = self.manifest(version)
        rows = json.loads((folder / ITEMS).read_text(encoding="utf-8"))
        ann = load_index(folder, manifest["index"], RowLabels(rows["ids"], rows["categories"]))
        items = _item_fields(rows)
        if items is None:
            log.warning(
                "index %s holds no item fields (built by an older release): searches read "
                "them from SQL until the next `recsearch build`",
                version,
            )
        return IndexArtifact(
            version=version,
            folder=folder,
            manifest=manifest,
            ann=ann,
            ids=rows["ids"],
            categories=rows["categories"],
            text_hashes=rows["text_hashes"],
            lexical=_load_lexical(folder, len(rows["ids"])),
            items=items,
            chunks=_load_chunks(folder, manifest, len(rows["ids"])),
        )


class LiveIndex(LiveVersion[IndexArtifact]):
    """The serving index version; NotReady before the first build."""

    def __init__(
        self,
        store: IndexStore,
        poll_s: float,
        model_name: str | Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        """model_name: the encoder this process encodes with (an index built with another is
        NotReady), or a callable given a version's manifest that raises NotReady for a version
        it cannot encode for."""

        def load(version: str) -> IndexArtifact:
            loaded = store.load(version)
            built_with = loaded.model_name
            if callable(model_name):
                model_name(loaded.manifest)
            elif model_name is not None and built_with != model_name:
                raise NotReady(
                    f"index {version} was built with model {built_with!r} but this process "
                    f"encodes with {model_name!r}: run `recsearch build`"
                )
            return loaded

        def missing() -> IndexArtifact:
            raise NotReady(
                "no index is published yet: run `recsearch build` after `recsearch ingest`"
            )

        super().__init__(store, poll_s, load, missing)
        self.store: IndexStore = store

    def get_or_none(self) -> IndexArtifact | None:
        try:
            return self.get()
        except NotReady:
            return None


def _load_chunks(folder: Path, manifest: dict[str, Any], size: int) -> Chunks | None:
    section = manifest.get("chunks")
    if not section or not section.get("count"):
        return None
    with _LOADING:  # .npy files (see _LOADING)
        return Chunks.load(folder, section, size)


def _load_lexical(folder: Path, size: int) -> LexicalIndex | None:
    with _LOADING:  # its matrices are .npy files (see _LOADING)
        return LexicalIndex.load(folder, size)


def write_artifact_files(
    folder: Path,
    *,
    manifest: dict[str, Any],
    ids: list[str],
    categories: list[str | None],
    text_hashes: list[str],
    vectors: np.ndarray,
    items: list[ItemFields],
) -> None:
    """Write the row map with the items' fields, the vectors and the manifest of a staged
    version; items is row-aligned with ids."""
    if len(items) != len(ids):
        raise ValueError(f"{len(items)} item fields for {len(ids)} ids")
    write_json_durably(
        folder / ITEMS,
        {
            "ids": ids,
            "categories": categories,
            "text_hashes": text_hashes,
            "titles": [i.title for i in items],
            "tags": [list(i.tags) for i in items],
            "attributes": [i.attributes for i in items],
            "created_at": [
                None if i.created_at is None else i.created_at.isoformat() for i in items
            ],
        },
    )
    with open(folder / VECTORS, "wb") as fh:
        np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
        fh.flush()
        os.fsync(fh.fileno())
    write_json_durably(folder / MANIFEST, manifest)


def _item_fields(rows: dict[str, Any]) -> list[ItemFields] | None:
    """The fields items.json holds, row-aligned; None when it predates them."""
    if "titles" not in rows:
        return None
    return [
        ItemFields(
            title,
            category,
            tuple(tags),
            attributes,
            None if created is None else datetime.fromisoformat(created),
        )
        for title, category, tags, attributes, created in zip(
            rows["titles"],
            rows["categories"],
            rows["tags"],
            rows["attributes"],
            rows["created_at"],
            strict=True,
        )
    ]
