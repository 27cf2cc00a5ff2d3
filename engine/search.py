"""The search pipeline: query text → vector → ANN candidates → items from SQL."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from engine.catalog import get_items
from engine.config import Settings
from engine.embedder import Embedder
from engine.errors import InvalidInput, NotReady, Problem
from engine.index_store import IndexArtifact, IndexStore

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 2_000
# Candidates fetched beyond k, so items deleted since the build can be dropped without a refetch.
_OVERFETCH = 16


@dataclass(frozen=True)
class SearchRequest:
    q: str
    k: int = 10
    category: str | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any], max_k: int) -> SearchRequest:
        """Validate raw request fields (strings from a query string or JSON values)."""
        problems: list[Problem] = []
        unknown = sorted(set(raw) - {"q", "k", "category"})
        for name in unknown:
            problems.append(Problem(name, "unknown field; allowed fields are q, k, category"))
        q = raw.get("q")
        if q is None or (isinstance(q, str) and not q.strip()):
            problems.append(Problem("q", "is required: the text to search for"))
        elif not isinstance(q, str):
            problems.append(Problem("q", f"must be a string, got {q!r}"))
        elif len(q) > MAX_QUERY_CHARS:
            problems.append(Problem("q", f"is {len(q)} characters; the limit is {MAX_QUERY_CHARS}"))
        k_raw = raw.get("k", 10)
        k = 10
        try:
            if isinstance(k_raw, bool) or isinstance(k_raw, float):
                raise ValueError
            k = int(k_raw)
            if not 1 <= k <= max_k:
                problems.append(Problem("k", f"must be between 1 and {max_k}, got {k}"))
        except (TypeError, ValueError):
            problems.append(
                Problem("k", f"must be an integer between 1 and {max_k}, got {k_raw!r}")
            )
        category = raw.get("category")
        if category is not None and not isinstance(category, str):
            problems.append(Problem("category", f"must be a string, got {category!r}"))
        if problems:
            raise InvalidInput("; ".join(str(p) for p in problems), problems)
        assert isinstance(q, str)
        return cls(q=q.strip(), k=k, category=(category or "").strip() or None)


@dataclass
class SearchHit:
    id: str
    title: str
    category: str | None
    score: float
    tags: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResponse:
    results: list[SearchHit]
    index_version: str
    took_ms: float
    timings_ms: dict[str, float]


class Searcher:
    """Serves searches from the current index version and swaps in newer ones as published.

    Thread-safe: requests read one artifact reference; a newer version is loaded by whichever
    request notices it first, while the others keep using the old one.
    """

    def __init__(self, settings: Settings, embedder: Embedder) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = IndexStore(settings.index_dir)
        self._artifact: IndexArtifact | None = None
        self._checked_at = 0.0
        self._reload_lock = threading.Lock()

    def artifact(self) -> IndexArtifact:
        """The serving version, refreshed from CURRENT at most every index_poll_s seconds."""
        now = time.monotonic()
        current = self._artifact
        if current is not None and now - self._checked_at < self.settings.index_poll_s:
            return current
        with self._reload_lock:
            if self._artifact is not None and now - self._checked_at < self.settings.index_poll_s:
                return self._artifact
            version = self.store.current_version()
            if version is None:
                raise NotReady(
                    "no index is published yet: run `recsearch build` after `recsearch ingest`"
                )
            if self._artifact is None or self._artifact.version != version:
                loaded = self.store.load(version)
                if loaded.manifest["model"]["name"] != self.embedder.name:
                    raise NotReady(
                        f"index {version} was built with model {loaded.manifest['model']['name']!r}"
                        f" but this server encodes queries with {self.embedder.name!r}: rebuild"
                    )
                log.info("serving index version %s (%d items)", version, loaded.ann.size)
                self._artifact = loaded
            self._checked_at = time.monotonic()
            return self._artifact

    def search(self, session: Session, request: SearchRequest) -> SearchResponse:
        """Top-k items for the query; raises NotReady before the first build."""
        started = time.perf_counter()
        artifact = self.artifact()
        t0 = time.perf_counter()
        query_vector = self.embedder.encode_query(request.q)
        t1 = time.perf_counter()

        allowed: np.ndarray | None = None
        if request.category is not None:
            allowed = artifact.rows_for_category(request.category)
            if allowed.size == 0:
                return SearchResponse([], artifact.version, _ms(started), {})
        hits = self._fetch(session, artifact, query_vector, request.k, allowed)
        t2 = time.perf_counter()
        timings = {"embed": (t1 - t0) * 1e3, "ann_and_fetch": (t2 - t1) * 1e3}
        return SearchResponse(hits, artifact.version, _ms(started), timings)

    def _fetch(
        self,
        session: Session,
        artifact: IndexArtifact,
        query_vector: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
    ) -> list[SearchHit]:
        limit = artifact.ann.size if allowed is None else int(allowed.size)
        fetch_k = min(limit, k + _OVERFETCH)
        while True:
            scores, rows = artifact.ann.search(query_vector, fetch_k, allowed_rows=allowed)
            pairs = [
                (artifact.ids[r], float(s))
                for s, r in zip(scores[0], rows[0], strict=True)
                if r >= 0
            ]
            items = get_items(session, [item_id for item_id, _ in pairs])
            hits = [
                SearchHit(
                    id=item_id,
                    title=items[item_id].title,
                    category=items[item_id].category,
                    score=round(score, 6),
                    tags=list(items[item_id].tags or []),
                    attributes=dict(items[item_id].attributes or {}),
                )
                for item_id, score in pairs
                if item_id in items
            ]
            # Enough live items, or nothing more to fetch: done. Otherwise many candidates were
            # deleted since the build; look further down the list.
            if len(hits) >= k or fetch_k >= limit:
                return hits[:k]
            fetch_k = min(limit, fetch_k * 4)


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1e3, 3)
