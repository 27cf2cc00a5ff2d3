"""The search path as it was before issue 9 (engine/search.py at commit af3377a), kept only
for tests/test_search_equivalence.py, which checks that the lean path returns exactly what
this one returns. Delete both when that check has served its purpose.

Changes from the original: imports only (its features module and its SqlState are copied
here too, since the engine's changed). BM25 goes through engine.index.lexical as before, which now
orders equal scores by row where bm25s's retrieve left them in an arbitrary order; the sample
catalog has such ties. tests/test_lexical.py checks it against bm25s, ties allowed.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Text, cast, func, select
from sqlalchemy.orm import Session

from engine.core.clock import utcnow
from engine.core.config import Settings
from engine.encoder.embedder import Embedder
from engine.index.artifact import IndexArtifact, IndexStore, LiveIndex
from engine.index.delta import Delta, DeltaSnapshot
from engine.index.vectors import ItemVectors
from engine.ranking.ranker import LinearRanker
from engine.search.context import combine, mean_direction
from engine.store.models import Covisit, Item, ItemStats
from engine.users.decay import decay
from engine.users.impressions import ImpressionLog, Shown
from engine.users.profile import UserState, load_user, most_popular
from tests import _legacy_features as feats

log = logging.getLogger(__name__)

# Candidates fetched beyond what is needed, so items deleted since the build can be dropped.
_OVERFETCH = 16


@dataclass(frozen=True)
class SearchRequest:
    """A validated search (engine.search.schemas.SearchQuery makes one from what a client sent)."""

    q: str | None = None
    k: int = 10
    category: str | None = None
    user_id: str | None = None
    context_items: tuple[str, ...] = ()
    exclude_seen: str = "purchased"
    explain: bool = False


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
    timings_ms: dict[str, float]
    request_id: str = ""


@dataclass
class Stage:
    """What the first stage hands the ranker: candidates, their features, and the context."""

    artifact: IndexArtifact
    candidates: list[feats.Candidate]
    x: np.ndarray  # (len(candidates), len(names)) features
    names: tuple[str, ...]
    parts: feats.ContextParts
    mode: str
    timings_ms: dict[str, float]


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
        self.feature_names = feats.feature_names(settings.attribute_features())
        self._half_life_s = settings.half_life_days * 86_400.0

    @property
    def store(self) -> IndexStore:
        return self.live.store

    def artifact(self) -> IndexArtifact:
        return self.live.get()

    def search(self, session: Session, request: Any) -> SearchResponse:
        """Top-k items for the request; raises NotReady before the first build."""
        started = time.perf_counter()
        stage = self.first_stage(session, request)
        t = time.perf_counter()
        ranker = self.ranker().aligned(stage.names)
        hits, shown_rows = self._rank(stage, ranker, request)
        stage.timings_ms["rank"] = _ms(t)
        request_id = uuid.uuid4().hex
        if self.impressions is not None and hits:
            self.impressions.log(
                Shown(
                    request_id=request_id,
                    user_id=request.user_id,
                    item_ids=[h.id for h in hits],
                    names=stage.names,
                    features=stage.x[shown_rows],
                    model_version=ranker.version,
                    index_version=stage.artifact.version,
                    ts=stage.parts.now,
                )
            )
        return SearchResponse(
            hits, stage.artifact.version, _ms(started), stage.mode, stage.timings_ms, request_id
        )

    def first_stage(
        self,
        session: Session,
        request: SearchRequest,
        include: Sequence[str] = (),
        state: Any = None,
    ) -> Stage:
        """Candidates from every source, merged, with their features (also used by training).

        include: item ids to score even if no source found them (random negatives), last.
        state: users and items as of some moment; default the live state in SQL, now.
        """
        artifact = self.live.get()
        delta = self.delta.snapshot(artifact) if self.delta is not None else None
        state = state or LegacySqlState(session, utcnow())
        timings: dict[str, float] = {}
        t = time.perf_counter()
        query_vector = self.embedder.encode_query(request.q) if request.q else None
        timings["embed"] = _ms(t)
        user = state.user(request.user_id) if request.user_id else None
        user_vector = user.unit_vector() if user else None
        session_vectors = self.vectors.get(session, request.context_items)
        session_vector = mean_direction(list(session_vectors.values()))
        parts = feats.ContextParts(query_vector, user, user_vector, session_vector, state.now)
        context = combine(
            [
                (self.settings.query_weight, query_vector),
                (self.settings.user_weight, user_vector),
                (self.settings.session_weight, session_vector),
            ]
        )
        exclude = _excluded(user, request)
        if query_vector is None:
            exclude |= set(request.context_items)  # "for you" should not echo the session

        t = time.perf_counter()
        if context is None:
            mode = "popular"
            candidates = self._popular(session, state, request, exclude)
        else:
            mode = "search" if query_vector is not None else "recommend"
            candidates = self._retrieve(session, artifact, delta, context, request, exclude)
        if user is not None and user.recent and self.settings.covisit_candidates > 0:
            self._add_covisited(session, state, user, request, exclude, candidates)
        if include:
            found = {c.item_id for c in candidates}
            extra = _load_candidates(session, [i for i in include if i not in found])
            for c in extra:
                c.rank = len(candidates)
                candidates.append(c)
        as_of = state.popularity([c.item_id for c in candidates])
        for c in candidates:
            if as_of is not None:
                c.popularity = as_of.get(c.item_id, 0.0)
            elif c.popularity and c.popularity_ref is not None and state.now > c.popularity_ref:
                age_s = (state.now - c.popularity_ref).total_seconds()
                c.popularity *= decay(age_s, self._half_life_s)
        timings["retrieve"] = _ms(t)
        t = time.perf_counter()
        x = np.zeros((0, len(self.feature_names)))
        if candidates:
            vectors_by_id = self._candidate_vectors(session, artifact, delta, candidates)
            zero = np.zeros(artifact.dim, np.float32)
            item_vectors = np.stack([vectors_by_id.get(c.item_id, zero) for c in candidates])
            x = feats.compute(candidates, item_vectors, parts, self.feature_names)
        timings["features"] = _ms(t)
        return Stage(artifact, candidates, x, self.feature_names, parts, mode, timings)

    def _retrieve(
        self,
        session: Session,
        artifact: IndexArtifact,
        delta: DeltaSnapshot | None,
        context: np.ndarray,
        request: SearchRequest,
        exclude: set[str],
    ) -> list[feats.Candidate]:
        allowed: np.ndarray | None = None
        if request.category is not None:
            allowed = artifact.rows_for_category(request.category)
            if allowed.size == 0 and (delta is None or delta.size == 0):
                return []
        # Rows of items rewritten since the build are stale: their delta entry replaces them.
        skip = exclude | (delta.shadows() if delta is not None else set())
        limit = artifact.ann.size if allowed is None else int(allowed.size)
        want = max(self.settings.candidates, request.k)
        lexical: dict[str, tuple[int, float]] = {}
        if request.q:
            found: list[tuple[str, float]] = []
            if artifact.lexical is not None and (allowed is None or allowed.size):
                rows, scores = artifact.lexical.search(request.q, want + len(skip), allowed)
                found = [
                    (artifact.ids[r], float(sc))
                    for r, sc in zip(rows, scores, strict=True)
                    if artifact.ids[r] not in skip
                ]
            if delta is not None:
                found += [
                    (i, sc)
                    for i, sc in delta.lexical_search(request.q, want, request.category)
                    if i not in exclude
                ]
            ranked = sorted(found, key=lambda p: -p[1])
            lexical = {
                i: (rank, sc)
                for rank, (i, sc) in enumerate(ranked[: self.settings.lexical_candidates])
            }
        extra = delta.search(context, want, request.category) if delta is not None else []
        extra = [(i, sc) for i, sc in extra if i not in exclude]
        fetch_k = min(limit, want + _OVERFETCH + len(skip))
        while True:
            pairs: list[tuple[str, float]] = []
            if limit > 0:
                scores, rows = artifact.ann.search(context, fetch_k, allowed_rows=allowed)
                pairs = [
                    (artifact.ids[r], float(sc))
                    for sc, r in zip(scores[0], rows[0], strict=True)
                    if r >= 0 and artifact.ids[r] not in skip
                ]
            merged_pairs = sorted(pairs + extra, key=lambda p: -p[1])
            ann_ids = [i for i, _ in merged_pairs]
            ann_rank = {i: rank for rank, i in enumerate(ann_ids)}
            merged = list(dict.fromkeys([*ann_ids, *lexical]))
            candidates = _load_candidates(session, merged)
            live_ann = sum(1 for c in candidates if c.item_id in ann_rank)
            # Enough live items, or nothing more to fetch: done. Otherwise many candidates
            # were deleted since the build; look further down the list.
            if live_ann >= want or fetch_k >= limit:
                break
            fetch_k = min(limit, fetch_k * 4)
        kept_ann = 0
        out = []
        for c in candidates:
            in_ann = c.item_id in ann_rank
            if in_ann:
                kept_ann += 1
                if kept_ann > want and c.item_id not in lexical:
                    continue
                c.ann_rank = kept_ann - 1
            if c.item_id in lexical:
                c.lexical_rank, c.lexical_score = lexical[c.item_id]
            out.append(c)
        return out

    def _add_covisited(
        self,
        session: Session,
        state: Any,
        user: UserState,
        request: SearchRequest,
        exclude: set[str],
        candidates: list[feats.Candidate],
    ) -> None:
        """Items co-visited with the user's latest ones: merged in, scored, remembered."""
        recent = list(dict.fromkeys(r[0] for r in user.recent))[: self.settings.covisit_window]
        found = state.covisited(recent, self.settings.covisit_candidates, exclude)
        if not found:
            return
        by_id = {c.item_id: c for c in candidates}
        new_ids = [i for i, _ in found if i not in by_id]
        for c in _load_candidates(session, new_ids):
            if request.category is None or c.category == request.category:
                c.rank = len(candidates)
                candidates.append(c)
                by_id[c.item_id] = c
        for rank, (item_id, weight) in enumerate(found):
            hit = by_id.get(item_id)
            if hit is not None:
                hit.covisit_rank, hit.covisit_score = rank, weight

    def _popular(
        self, session: Session, state: Any, request: SearchRequest, exclude: set[str]
    ) -> list[feats.Candidate]:
        want = max(self.settings.candidates, request.k)
        ids = state.most_popular(want, exclude, request.category)
        if len(ids) < want:  # a young catalog: fill with the newest items
            query = select(Item.id).order_by(Item.updated_at.desc(), Item.id).limit(want * 2)
            if request.category is not None:
                query = query.where(Item.category == request.category)
            taken = set(ids) | exclude
            ids += [i for i in session.scalars(query) if i not in taken][: want - len(ids)]
        return _load_candidates(session, ids)

    def _rank(
        self, stage: Stage, ranker: LinearRanker, request: SearchRequest
    ) -> tuple[list[SearchHit], list[int]]:
        """The top k hits, and the candidate rows they came from."""
        if not stage.candidates:
            return [], []
        logits = ranker.logits(stage.x)
        probabilities = ranker.probability(logits)
        candidates = stage.candidates
        order = sorted(range(len(candidates)), key=lambda i: (-logits[i], candidates[i].rank))
        hits = []
        for i in order[: request.k]:
            c = candidates[i]
            hits.append(
                SearchHit(
                    id=c.item_id,
                    title=c.title,
                    category=c.category,
                    score=round(float(probabilities[i]), 6),
                    tags=c.tags,
                    attributes=c.attributes,
                    explanation=ranker.explain(stage.x[i]) if request.explain else None,
                )
            )
        return hits, order[: request.k]

    def _candidate_vectors(
        self,
        session: Session,
        artifact: IndexArtifact,
        delta: DeltaSnapshot | None,
        candidates: list[feats.Candidate],
    ) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        missing = []
        rows = []
        for c in candidates:
            fresh = delta.row_of(c.item_id) if delta is not None and delta.size else None
            if fresh is not None and delta is not None:
                out[c.item_id] = delta.vectors[fresh]
                continue
            row = artifact.row_of(c.item_id)
            if row is None:
                missing.append(c.item_id)
            else:
                rows.append((c.item_id, row))
        if rows:
            order = np.argsort([r for _, r in rows])  # sequential reads of the mmap
            block = artifact.vectors()[np.asarray([r for _, r in rows])[order]]
            for j, idx in enumerate(order):
                out[rows[idx][0]] = block[j]
        if missing:
            out.update(self.vectors.get(session, missing))
        return out


def _excluded(user: UserState | None, request: SearchRequest) -> set[str]:
    if user is None or request.exclude_seen == "none":
        return set()
    if request.exclude_seen == "all":
        return user.seen_items()
    return set(user.purchased)


def _load_candidates(session: Session, ids: list[str]) -> list[feats.Candidate]:
    """Candidates in the given order, for the ids that still exist, with their popularity.

    One query; tags and attributes come back as JSON text (see Candidate).
    """
    if not ids:
        return []
    query = (
        select(
            Item.id,
            Item.title,
            Item.category,
            Item.created_at,
            cast(Item.tags, Text).label("tags"),
            cast(Item.attributes, Text).label("attributes"),
            ItemStats.popularity,
            ItemStats.ref_ts,
        )
        .outerjoin(ItemStats, ItemStats.item_id == Item.id)
        .where(Item.id.in_(ids))
    )
    rows = {row.id: row for row in session.execute(query)}
    out: list[feats.Candidate] = []
    for item_id in ids:
        row = rows.get(item_id)
        if row is None:
            continue
        out.append(
            feats.Candidate(
                item_id=item_id,
                rank=len(out),
                title=row.title,
                category=row.category,
                popularity=row.popularity or 0.0,  # as stored; first_stage decays it
                popularity_ref=row.ref_ts,
                created_at=row.created_at,
                tags_json=row.tags,
                attributes_json=row.attributes,
            )
        )
    return out


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1e3, 3)


class LegacySqlState:
    """engine.users.state.SqlState as it was."""

    def __init__(self, session: Session, now: Any) -> None:
        self.session = session
        self.now = now

    def user(self, user_id: str) -> UserState | None:
        return load_user(self.session, user_id)

    def popularity(self, item_ids: list[str]) -> dict[str, float] | None:
        return None  # joined into the candidate query, decayed there

    def most_popular(self, limit: int, exclude: set[str], category: str | None) -> list[str]:
        return most_popular(self.session, limit, exclude, category)

    def covisited(
        self, item_ids: list[str], limit: int, exclude: set[str]
    ) -> list[tuple[str, float]]:
        if not item_ids or limit <= 0:
            return []
        total = func.sum(Covisit.weight).label("total")
        query = (
            select(Covisit.item_b, total)
            .where(Covisit.item_a.in_(item_ids))
            .group_by(Covisit.item_b)
            .order_by(total.desc(), Covisit.item_b)
            .limit(limit + len(exclude) + len(item_ids))
        )
        skip = exclude | set(item_ids)
        return [(b, float(w)) for b, w in self.session.execute(query).all() if b not in skip][
            :limit
        ]
