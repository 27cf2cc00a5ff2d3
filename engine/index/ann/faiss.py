"""FAISS backend: exact flat, HNSW and IVF indexes over inner product."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.index.ann.base import AnnIndex

INDEX_FILE = "index.faiss"
# faiss's bundled type stubs miss the SWIG classes used here (SearchParametersHNSW, ...).
faiss: Any = _faiss


def choose_factory(settings: Settings, n_items: int) -> str:
    """The FAISS factory string for a catalog of n_items under settings.index_type."""
    kind = settings.index_type.strip()
    if kind == "auto":
        kind = "flat" if n_items <= settings.auto_flat_max_items else "hnsw"
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        # The graph's copy of the vectors in float16 (the version keeps float32 ones for
        # features and rebuilds): at 100k items 99 MB instead of 172, recall@10 and @50
        # against the exact top k the same (0.983, 0.975), and a search 0.81x the time on a
        # busy host (0.623 vs 0.770 ms p50), 0.96x on a quiet one (0.454 vs 0.473), in two
        # runs of bench/hnsw_storage.py. A search walks the graph from vector to vector, so
        # it waits on memory: 768 bytes a vector instead of 1,536, which matters most when
        # other work crowds the caches. The factory string "HNSW32" keeps float32.
        return f"HNSW{settings.hnsw_m},SQfp16"
    if kind == "ivf":
        # ~4·sqrt(n) lists, and FAISS wants ≥ 39 training points per list.
        n_lists = max(1, min(int(4 * math.sqrt(max(n_items, 1))), n_items // 39 or 1))
        return f"IVF{n_lists},Flat"
    return kind  # a raw FAISS factory string, e.g. "IVF1024,PQ32" or "HNSW16,Flat"


class FaissIndex(AnnIndex):
    backend = "faiss"

    def __init__(self, index: faiss.Index, factory: str, params: dict[str, Any]) -> None:
        self.index = index
        self.factory = factory
        self.params = params
        self._apply_search_params()

    @classmethod
    def create(cls, dim: int, factory: str, settings: Settings) -> FaissIndex:
        try:
            index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(
                f"RECSEARCH_INDEX_TYPE={factory!r} is not a FAISS factory string FAISS accepts: "
                f"{str(exc).strip().splitlines()[-1]}"
            ) from None
        params: dict[str, Any] = {}
        hnsw = _hnsw_of(index)
        if hnsw is not None:
            hnsw.efConstruction = settings.hnsw_ef_construction
            params["efConstruction"] = settings.hnsw_ef_construction
            params["efSearch"] = settings.hnsw_ef_search
        if _ivf_of(index) is not None:
            params["nprobe"] = settings.ivf_nprobe
        return cls(index, factory, params)

    @classmethod
    def load(cls, folder: Path, description: dict[str, Any]) -> FaissIndex:
        # mmap keeps a large index out of the heap until its pages are touched.
        file = description.get("file", INDEX_FILE)
        index = faiss.read_index(str(folder / file), faiss.IO_FLAG_MMAP)
        return cls(index, description["factory"], dict(description.get("params", {})))

    def _apply_search_params(self) -> None:
        hnsw = _hnsw_of(self.index)
        if hnsw is not None and "efSearch" in self.params:
            hnsw.efSearch = int(self.params["efSearch"])
        ivf = _ivf_of(self.index)
        if ivf is not None and "nprobe" in self.params:
            ivf.nprobe = int(self.params["nprobe"])

    def train(self, vectors: np.ndarray) -> None:
        if not self.index.is_trained:
            self.index.train(vectors)

    def add(self, vectors: np.ndarray) -> None:
        self.train(vectors)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(
        self, queries: np.ndarray, k: int, *, allowed_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries.reshape(-1, self.index.d), dtype=np.float32)
        k = max(1, min(k, self.index.ntotal)) if self.index.ntotal else 1
        params = None
        if allowed_rows is not None:
            params = self._filtered_params(allowed_rows)
        scores, rows = self.index.search(queries, k, params=params)
        return scores, rows

    def _filtered_params(self, allowed_rows: np.ndarray) -> faiss.SearchParameters:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_rows, dtype=np.int64))
        if _hnsw_of(self.index) is not None:
            params: Any = faiss.SearchParametersHNSW(
                sel=selector, efSearch=int(self.params.get("efSearch", 16))
            )
        elif _ivf_of(self.index) is not None:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=int(self.params["nprobe"]))
        else:
            params = faiss.SearchParameters(sel=selector)
        params._selector_ref = selector  # the SWIG object does not own it; keep it alive
        return params

    def save(self, folder: Path, file: str = INDEX_FILE) -> dict[str, Any]:
        faiss.write_index(self.index, str(folder / file))
        return {**self.description, "file": file}

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @property
    def description(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "factory": self.factory,
            "params": dict(self.params),
            "file": INDEX_FILE,
            "is_exact": self.factory == "Flat",
        }


def _hnsw_of(index: faiss.Index) -> Any:
    try:
        return faiss.downcast_index(index).hnsw
    except AttributeError:
        return None


def _ivf_of(index: faiss.Index) -> Any:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def exact_top_k(xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (the oracle for recall); (scores, rows) each (n_q, k)."""
    flat = faiss.IndexFlatIP(xb.shape[1])
    flat.add(np.ascontiguousarray(xb, dtype=np.float32))
    return flat.search(np.ascontiguousarray(xq, dtype=np.float32), min(k, xb.shape[0]))
