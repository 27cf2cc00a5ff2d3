"""Milvus backend: one collection per index version, behind an alias that moves atomically
(the part CURRENT plays for FAISS), and item upserts and deletes written straight into the
serving collection between builds.

One client (pymilvus, the `recsearch[milvus]` extra) reaches both kinds of Milvus: a URI
ending in .db runs Milvus Lite inside this process, http://host:19530 a Milvus standalone
or cluster. Milvus Lite locks its folder: one process at a time may open it, so it suits
one process (`recsearch serve --workers 1`, builds from the admin page); several workers or
hosts need a Milvus server: 2.3 standalone and later are tested (tests/index/test_milvus.py).

Searches ask for RECSEARCH_MILVUS_CONSISTENCY (Bounded by default: Strong waits for the
server's time tick, 200-370 ms a search on 2.3 here). A build's own searches (its recall
check) ask for Strong. Under a weaker level an item just written may not show in the
collection for a moment: the delta serves it meanwhile (read_your_writes is then False).

Rows hold the id, the vector, the category, tags and attributes (filters run inside
Milvus as expressions: engine.index.ann.milvus_filter) and written_at, which lets the alias move
without losing writes (engine.index.ann.milvus_alias).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.core.config import Settings
from engine.core.errors import ConfigError, NotReady
from engine.core.values import is_lite_uri
from engine.index.ann.base import AnnIndex
from engine.index.ann.milvus_client import client, options_for, remember, shown_uri
from engine.index.ann.milvus_filter import all_of, equals, for_filters, one_of
from engine.index.ann.milvus_rows import LAYOUT, records, tags_path

if TYPE_CHECKING:
    from engine.catalog.filters import Filters

log = logging.getLogger(__name__)

ID_MAX = 256  # the items.id column's length
CATEGORY_MAX = 200  # the items.category column's length
WRITE_CHUNK = 1_000
_SEARCH_CHUNK = 100  # queries per request (a build's recall sample is 1,000 of them)
TOP_K_MAX = 16_384  # Milvus refuses a larger limit
STAMP = "%Y%m%dT%H%M%S"
_FLOAT_MIN = float(-np.finfo(np.float32).max)  # what FAISS puts in an empty slot's score

# --- index types -------------------------------------------------------------------------


def milvus_index(factory: str, settings: Settings) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(Milvus index type, build params, search params) for a factory string from
    engine.index.ann.faiss.choose_factory: Flat, HNSW<M>[,SQfp16] or IVF<lists>,Flat."""
    if factory == "Flat":
        return "FLAT", {}, {}
    # Milvus's HNSW keeps float32 vectors whatever FAISS would store (SQfp16).
    hnsw = re.fullmatch(r"HNSW([0-9]+)(?:,SQfp16)?", factory)
    if hnsw:
        build = {"M": int(hnsw.group(1)), "efConstruction": settings.hnsw_ef_construction}
        return "HNSW", build, {"ef": settings.hnsw_ef_search}
    ivf = re.fullmatch(r"IVF([0-9]+),Flat", factory)
    if ivf:
        return "IVF_FLAT", {"nlist": int(ivf.group(1))}, {"nprobe": settings.ivf_nprobe}
    raise ConfigError(
        f"RECSEARCH_INDEX_TYPE={factory!r} is a FAISS factory string; with "
        "RECSEARCH_VECTOR_STORE=milvus use auto, flat, hnsw or ivf"
    )


def _faiss_names(build: dict[str, Any], search: dict[str, Any]) -> dict[str, Any]:
    """The parameters under the names FAISS manifests use (status pages and the build
    report read these), with Milvus's own beside them."""
    names = {"M": "M", "efConstruction": "efConstruction", "ef": "efSearch", "nlist": "nlist"}
    names["nprobe"] = "nprobe"
    return {names[k]: v for k, v in {**build, **search}.items()}


def collection_name(alias: str, now: datetime | None = None) -> str:
    """A new version's collection: <alias>_<UTC build time>_<random>, unique across hosts."""
    now = now or datetime.now(UTC)
    return f"{alias}_{now.strftime(STAMP)}_{secrets.token_hex(4)}"


class MilvusIndex(AnnIndex):
    """One version's collection. Rows are the labels' positions at the build; search_ids also
    finds items upserted since, and never the deleted ones."""

    backend = "milvus"
    is_live = True

    def __init__(
        self,
        uri: str,
        collection: str,
        alias: str,
        factory: str,
        index_type: str,
        params: dict[str, Any],
        search_params: dict[str, Any],
        rows: int = 0,
        layout: int = LAYOUT,
    ) -> None:
        self.uri = uri
        self.collection = collection
        self.alias = alias
        self.factory = factory
        self.index_type = index_type
        self.params = params  # build parameters
        self.search_params = search_params
        self._rows = rows
        self.layout = layout
        self._unflushed = False
        self.client = client(uri)
        # A build searches what it just wrote (the recall check): Strong until published.
        self.consistency = options_for(uri).consistency

    @property
    def read_your_writes(self) -> bool:
        """Whether a search sees every write acknowledged before it: Strong, or Milvus Lite
        (which applies each write in the call, whatever the level asked for)."""
        return self.consistency == "Strong" or is_lite_uri(self.uri)

    @classmethod
    def create(cls, dim: int, factory: str, settings: Settings) -> MilvusIndex:
        """A new, empty collection for a build (not yet behind the alias)."""
        from pymilvus import DataType, MilvusClient

        index_type, build, search = milvus_index(factory, settings)
        uri, alias = settings.milvus_target, settings.milvus_collection
        options = remember(settings)
        index = cls(uri, collection_name(alias), alias, factory, index_type, build, search)
        index.consistency = "Strong"
        # No nullable field and no array at a JSON field's top: what Milvus 2.3 takes too.
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("category", DataType.VARCHAR, max_length=CATEGORY_MAX)
        schema.add_field("tags", DataType.JSON)
        schema.add_field("attributes", DataType.JSON)
        schema.add_field("written_at", DataType.INT64)
        params = index.client.prepare_index_params()
        params.add_index("vector", index_type=index_type, metric_type="IP", params=build)
        index.client.create_collection(
            index.collection, schema=schema, consistency_level=options.consistency
        )
        # sync=False: the index of an empty collection has nothing to wait for, and the
        # wait asks for a timestamp that Milvus Lite does not implement (an error and ~0.5 s).
        index.client.create_index(index.collection, params, sync=False)
        index.client.load_collection(index.collection)
        log.info("created Milvus collection %s (%s) at %s", index.collection, factory, uri)
        return index

    @classmethod
    def load(cls, description: dict[str, Any]) -> MilvusIndex:
        """Open the collection a manifest's "index" section names; NotReady if it is gone."""
        index = cls(
            description["uri"],
            description["collection"],
            description["alias"],
            description["factory"],
            description["index_type"],
            dict(description.get("index_params", {})),
            dict(description.get("search_params", {})),
            int(description.get("rows", 0)),
            int(description.get("layout", 1)),
        )
        if not index.client.has_collection(index.collection):
            raise NotReady(
                f"Milvus collection {index.collection!r} at {shown_uri(index.uri)} is gone: "
                "run `recsearch build`, or roll back to a version whose collection exists"
            )
        state = str(index.client.get_load_state(index.collection).get("state", ""))
        if not state.endswith("Loaded"):
            index.client.load_collection(index.collection)  # after a restart: into memory
        return index

    def add(self, vectors: np.ndarray) -> None:
        labels = self.labels
        start, n = self._rows, vectors.shape[0]
        if start + n > len(labels.ids):
            raise ValueError(f"{start + n} rows but {len(labels.ids)} labels")
        for lo in range(0, n, WRITE_CHUNK):
            hi = min(n, lo + WRITE_CHUNK)
            rows = range(start + lo, start + hi)
            self.client.insert(
                self.collection,
                records(
                    [labels.ids[r] for r in rows],
                    vectors[lo:hi],
                    [labels.categories[r] for r in rows],
                    None if labels.tags is None else [labels.tags[r] for r in rows],
                    None if labels.attributes is None else [labels.attributes[r] for r in rows],
                    written_at=0,
                    layout=self.layout,
                ),
            )
        self._rows += n
        self._unflushed = True

    def _search(
        self, queries: np.ndarray, k: int, expression: str
    ) -> list[list[tuple[str, float]]]:
        """(id, score) lists, best first, one per query."""
        if self._unflushed:
            # Seals the build's rows so Milvus indexes them: recall is then measured on
            # the index that serves, not on a brute-force scan of unsealed rows.
            self.client.flush(self.collection)
            self._unflushed = False
            self._wait_indexed()
        limit = max(1, min(k, TOP_K_MAX))
        params: dict[str, Any] = dict(self.search_params)
        if "ef" in params:
            params["ef"] = max(int(params["ef"]), limit)  # HNSW needs ef ≥ k
        out: list[list[tuple[str, float]]] = []
        xq = np.ascontiguousarray(queries, dtype=np.float32)
        for lo in range(0, xq.shape[0], _SEARCH_CHUNK):
            hits = self.client.search(
                self.collection,
                data=xq[lo : lo + _SEARCH_CHUNK].tolist(),
                limit=limit,
                filter=expression,
                output_fields=["id"],
                search_params={"metric_type": "IP", "params": params},
                consistency_level=self.consistency,
            )
            out.extend([(h["id"], float(h["distance"])) for h in found] for found in hits)
        return out

    def _wait_indexed(self, timeout_s: float = 600.0) -> None:
        """Until a server searches the index of every row the build wrote (Milvus Lite
        indexes as it goes and reports nothing).

        A server indexes sealed segments in the background after the flush, and its query
        nodes go on scanning the rows as they were (exactly) until they hand over to the
        indexed segments, seconds later. The new collection serves no one yet: reloading
        it once the index is built makes searches use the index at once, so the recall
        gate measures what will serve.
        """
        if is_lite_uri(self.uri):
            return
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.client.describe_index(self.collection, "vector")
            pending = int(state.get("pending_index_rows", 0))
            if state.get("state") == "Finished" and not pending:
                self.client.release_collection(self.collection)
                self.client.load_collection(self.collection)
                return
            if state.get("state") == "Failed":
                raise NotReady(f"Milvus failed to index {self.collection}: {state}")
            if time.monotonic() > deadline:
                raise NotReady(
                    f"Milvus has not indexed {self.collection} after {timeout_s:.0f} s: {state}"
                )
            time.sleep(0.2)

    def search(
        self, queries: np.ndarray, k: int, *, allowed_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = queries.reshape(-1, queries.shape[-1])
        k = max(1, min(k, self._rows)) if self._rows else 1
        expression = "" if allowed_rows is None else self._rows_expression(allowed_rows)
        if allowed_rows is not None and allowed_rows.size == 0:
            found: list[list[tuple[str, float]]] = [[] for _ in range(queries.shape[0])]
        else:
            found = self._search(queries, k, expression)
        scores = np.full((queries.shape[0], k), _FLOAT_MIN, dtype=np.float32)
        rows = np.full((queries.shape[0], k), -1, dtype=np.int64)
        for i, hits in enumerate(found):
            # Items upserted since the build have no row: row search leaves them out.
            at_build = [
                (r, sc) for r, sc in ((self.row_of(h), sc) for h, sc in hits) if r is not None
            ]
            for j, (row, score) in enumerate(at_build[:k]):
                rows[i, j], scores[i, j] = row, score
        return scores, rows

    def _rows_expression(self, allowed_rows: np.ndarray) -> str:
        """A filter for the rows: the category's, when they are one category's rows (the
        search path's case), else their ids listed."""
        labels = self.labels
        if allowed_rows.size:
            category = labels.categories[int(allowed_rows[0])]
            if category is not None:
                rows = self.rows_for_category(category)
                if rows.size == allowed_rows.size and np.array_equal(rows, allowed_rows):
                    return equals("category", category)
        return one_of("id", (labels.ids[int(r)] for r in allowed_rows))

    def search_ids(
        self,
        query: np.ndarray,
        k: int,
        *,
        category: str | None = None,
        where: Filters | None = None,
    ) -> list[tuple[str, float]]:
        """The k nearest items the category and filters allow, run inside Milvus."""
        expression = all_of(
            [
                "" if category is None else equals("category", category),
                for_filters(where, tags=tags_path(self.layout)) if where else "",
            ]
        )
        return self._search(query.reshape(1, -1), k, expression)[0]

    def save(self, folder: Path) -> dict[str, Any]:
        """Nothing to write into the folder: the manifest section names the collection."""
        if self._unflushed:
            self.client.flush(self.collection)
            self._unflushed = False
        return self.description

    def discard(self) -> None:
        self.client.drop_collection(self.collection)
        log.info("dropped Milvus collection %s (build not published)", self.collection)

    @property
    def size(self) -> int:
        return self._rows

    @property
    def description(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "factory": self.factory,
            "params": _faiss_names(self.params, self.search_params),
            "index_type": self.index_type,
            "index_params": dict(self.params),
            "search_params": dict(self.search_params),
            "uri": shown_uri(self.uri),
            "collection": self.collection,
            "alias": self.alias,
            "rows": self._rows,
            "layout": self.layout,
            "is_exact": self.index_type == "FLAT",
        }
