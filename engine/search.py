"""A search, one step per module:

request → engine.context (query ⊕ user ⊕ session, exclusions) → engine.candidates (ANN, BM25,
co-visitation or popular items, merged) → engine.features (φ(u, q, c)) → engine.ranker
(σ(w·φ + b), top k) → response; what was shown goes to engine.impressions.

Item fields and vectors come from the published index version and its delta
(engine.corpus); SQL is read for the user, the co-visits of the user's latest items, and
which candidates still exist with their popularity (engine.state), once each.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from engine import context as contexts
from engine import features
from engine.candidates import Candidate, gather
from engine.clock import utcnow
from engine.config import Settings
from engine.corpus import Corpus
from engine.delta import Delta
from engine.embedder import Embedder
from engine.impressions import ImpressionLog, Shown
from engine.index_store import IndexArtifact, IndexStore, LiveIndex
from engine.ranker import LinearRanker
from engine.state import SqlState, StateView
from engine.vectors import ItemVectors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchRequest:
    """A validated search (engine.schemas.SearchQuery makes one from what a client sent)."""

    q: str | None = None
    k: int = 10
    category: str | None = None
    user_id: str | None = None
    context_items: tuple[str, ...] = ()
    exclude_seen: str = "purchased"
    explain: bool = False
    timings: bool = False  # return per-stage timings even without explanations


@dataclass
class SearchHit:
    id: str
    title: str
    category: str | None
    score: float
    tags: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    explanation: dict[str, Any] | None = None


@dataclass
class SearchResponse:
    results: list[SearchHit]
    index_version: str
    took_ms: float
    mode: str  # "search" (a query), "recommend" (user or session only) or "popular"
    timings_ms: dict[str, float]  # embed, retrieve, features, rank
    request_id: str = ""
    show_timings: bool = False  # the request asked for timings_ms


@dataclass
class Stage:
    """What the first stage hands the ranker: candidates, their features, and the context."""

    index_version: str
    candidates: list[Candidate]
    x: np.ndarray  # (len(candidates), len(names)) features
    names: tuple[str, ...]
    context: contexts.Context
    timings_ms: dict[str, float]

    @property
    def mode(self) -> str:
        return self.context.mode


class Searcher:
    """Serves searches from the live index version with the live ranking model."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        live: LiveIndex | None = None,
        vectors: ItemVectors | None = None,
        ranker: Callable[[], LinearRanker] | None = None,
        impressions: ImpressionLog | None = None,
        delta: Delta | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.live = live or LiveIndex(
            IndexStore(settings.index_dir), settings.index_poll_s, embedder.name
        )
        self.vectors = vectors or ItemVectors(self.live, lambda: embedder)
        prior = LinearRanker.prior()
        self.ranker = ranker or (lambda: prior)
        self.impressions = impressions
        self.delta = delta
        self.feature_names = features.feature_names(settings.attribute_features())

    @property
    def store(self) -> IndexStore:
        return self.live.store

    def artifact(self) -> IndexArtifact:
        return self.live.get()

    def search(self, session: Session, request: SearchRequest) -> SearchResponse:
        """Top-k items for the request; raises NotReady before the first build."""
        started = time.perf_counter()
        stage = self.first_stage(session, request)
        t = time.perf_counter()
        ranker = self.ranker().aligned(stage.names)
        hits: list[SearchHit] = []
        shown: list[int] = []
        if stage.candidates:
            shown, probabilities = ranker.top(
                stage.x, [c.rank for c in stage.candidates], request.k
            )
            hits = [
                _hit(
                    stage.candidates[i],
                    float(probabilities[i]),
                    ranker.explain(stage.x[i]) if request.explain else None,
                )
                for i in shown
            ]
        stage.timings_ms["rank"] = _ms(t)
        request_id = uuid.uuid4().hex
        if self.impressions is not None and hits:
            self.impressions.log(
                Shown(
                    request_id=request_id,
                    user_id=request.user_id,
                    item_ids=[h.id for h in hits],
                    names=stage.names,
                    features=stage.x[shown].tolist(),
                    model_version=ranker.version,
                    index_version=stage.index_version,
                    ts=stage.context.now,
                )
            )
        return SearchResponse(
            hits,
            stage.index_version,
            _ms(started),
            stage.mode,
            stage.timings_ms,
            request_id,
            request.timings,
        )

    def first_stage(
        self,
        session: Session,
        request: SearchRequest,
        include: Sequence[str] = (),
        state: StateView | None = None,
    ) -> Stage:
        """Candidates from every source, merged, with their features (also used by training).

        include: item ids to score even if no source found them (random negatives), last.
        state: users and items as of some moment; default the live state in SQL, now.
        """
        artifact = self.live.get()
        snapshot = self.delta.snapshot(artifact) if self.delta is not None else None
        corpus = Corpus(artifact, snapshot, self.vectors)
        state = state or SqlState(session, utcnow())
        timings: dict[str, float] = {}
        t = time.perf_counter()
        query = self.embedder.encode_query(request.q) if request.q else None
        timings["embed"] = _ms(t)
        user = state.user(request.user_id) if request.user_id else None
        session_vectors: list[np.ndarray] = []
        if request.context_items:
            vectors, found = corpus.vectors(session, request.context_items)
            session_vectors = list(vectors[found])
        context = contexts.build(request, self.settings, state.now, query, user, session_vectors)

        t = time.perf_counter()
        candidates = gather(session, corpus, state, context, request, self.settings, include)
        timings["retrieve"] = _ms(t)
        t = time.perf_counter()
        x = np.zeros((0, len(self.feature_names)))
        if candidates:
            vectors, _ = corpus.vectors(session, [c.item_id for c in candidates])
            x = features.compute(candidates, vectors, context, self.feature_names)
        timings["features"] = _ms(t)
        return Stage(artifact.version, candidates, x, self.feature_names, context, timings)


def _hit(c: Candidate, probability: float, explanation: dict[str, Any] | None) -> SearchHit:
    return SearchHit(
        id=c.item_id,
        title=c.item.title,
        category=c.item.category,
        score=round(probability, 6),
        tags=list(c.item.tags),
        attributes=dict(c.item.attributes),
        explanation=explanation,
    )


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1e3, 3)
