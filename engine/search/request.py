"""What a search asks and what it answers, as the engine passes them between its stages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class SearchRequest:
    """A validated search (engine.search.schemas.SearchQuery makes one from what a client sent)."""

    q: str | None = None
    k: int = 10
    category: str | None = None
    user_id: str | None = None
    context_items: tuple[str, ...] = ()
    exclude_seen: str = "purchased"
    explain: bool = False
    timings: bool = False  # return per-stage timings even without explanations
    filters: Mapping[str, Any] | None = (
        None  # engine.catalog.filters' language; checked per version
    )
    diversity: float = 0.0  # MMR's λ (engine.search.diversify); 0 = the ranker's order
    max_per_category: int | None = None
    offset: int = 0  # results skipped: pages of k
    similar_to: str | None = None  # items like this one (never itself)


@dataclass(kw_only=True)
class SearchHit:
    id: str
    title: str
    category: str | None
    score: float
    tags: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    explanation: dict[str, Any] | None = None


@dataclass(kw_only=True)
class SearchResponse:
    results: list[SearchHit]
    index_version: str
    took_ms: float
    mode: str  # "search" (a query), "recommend" (user or session only) or "popular"
    timings_ms: dict[str, float]  # embed, user, retrieve, features, rank
    request_id: str = ""
    show_timings: bool = False  # the request asked for timings_ms
    next_offset: int | None = None  # the next page's offset; None at the end
