"""The search pipeline: a request through one stage module after another.

request → engine.search.context (query ⊕ user ⊕ session, exclusions) → engine.search.candidates
(ANN, BM25, co-visitation or popular items, merged) → engine.search.features (φ(u, q, c)) →
engine.ranking.ranker (σ(w·φ + b)) → rules, diversity, pins → a page; what was shown goes to
engine.users.impressions.

Item fields and vectors come from the published index version and its delta
(engine.index.corpus). SQL is read at most twice (engine.users.state): the user's row with the
co-visits of the user's latest items, then the items deleted since this process's ItemWatch
last looked (nearly always none); popularity and older deletions come from that watch.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from engine.catalog import filters as filtering
from engine.catalog.item_watch import ItemWatch
from engine.core.clock import utcnow
from engine.core.config import Settings
from engine.core.errors import NotFound
from engine.encoder.embedder import Embedder
from engine.index.artifact import IndexArtifact, IndexStore, LiveIndex
from engine.index.corpus import Corpus
from engine.index.delta import Delta
from engine.index.vectors import ItemVectors
from engine.ranking.experiments import Running
from engine.ranking.feature_names import feature_names
from engine.ranking.interleave import Side, team_draft
from engine.ranking.ranker import LinearRanker
from engine.ranking.rules import Rule, live_rules, pinned_ids, place_pins
from engine.ranking.rules import apply as apply_rules
from engine.search import context as contexts
from engine.search import features
from engine.search.candidates import Candidate, gather
from engine.search.diversify import diversify
from engine.search.request import SearchHit, SearchRequest, SearchResponse
from engine.users.impressions import ImpressionLog, Shown
from engine.users.profile import UserState
from engine.users.state import SqlState, StateView

log = logging.getLogger(__name__)


@dataclass
class Stage:
    """What the first stage hands the ranker: candidates, their features, and the context."""

    index_version: str
    candidates: list[Candidate]
    x: np.ndarray  # (len(candidates), len(names)) features
    names: tuple[str, ...]
    context: contexts.Context
    timings_ms: dict[str, float]
    vectors: np.ndarray | None = None  # (len(candidates), dim) unit vectors (diversity)
    similar: bool = False

    @property
    def mode(self) -> str:
        return "similar" if self.similar else self.context.mode


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
        rules: Callable[[], list[Rule]] | None = None,
        experiments: Callable[[], Running | None] | None = None,
        watch: ItemWatch | None = None,
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
        self.rules = rules or list
        self.experiments = experiments or (lambda: None)
        self._coin = random.Random()  # which searches an experiment takes
        self.feature_names = feature_names(settings.attribute_features())
        # Items' popularity and deletions, followed per process (None: read per search).
        self.watch = watch

    @property
    def store(self) -> IndexStore:
        return self.live.store

    def artifact(self) -> IndexArtifact:
        return self.live.get()

    def search(self, session: Session, request: SearchRequest) -> SearchResponse:
        """A page of results for the request; raises NotReady before the first build,
        InvalidInput for filters the catalog cannot answer, NotFound for an unknown similar_to.

        rank → rules (hide, boost, bury) → diversify → pins → page.
        """
        started = time.perf_counter()
        now = utcnow()
        rules = live_rules(self.rules(), now, request.q) if not request.similar_to else []
        stage = self.first_stage(session, request, include=pinned_ids(rules))
        t = time.perf_counter()
        ranker = self.ranker().aligned(stage.names)
        hits: list[SearchHit] = []
        shown: list[int] = []
        next_offset = None
        experiment: tuple[int, dict[str, Side]] | None = None
        if stage.candidates:
            logits = ranker.logits(stage.x)
            found_order = np.array([c.rank for c in stage.candidates])
            ranked = np.lexsort((found_order, -logits)).tolist()
            cands = [stage.candidates[i] for i in ranked]
            applied = apply_rules(
                rules, [c.item_id for c in cands], [c.item for c in cands], logits[ranked]
            )
            probabilities = ranker.probability(applied.logits)
            need = request.offset + request.k + 1  # one more says whether a next page exists
            running = self.experiments() if request.offset == 0 and not request.similar_to else None
            if running is not None and self._coin.random() < running.traffic:
                # An experiment's share: the live and candidate rankings (rules applied to
                # both), interleaved by team draft; diversity does not apply here.
                contender = running.candidate.aligned(stage.names)
                theirs = apply_rules(
                    rules,
                    [c.item_id for c in cands],
                    [c.item for c in cands],
                    contender.logits(stage.x)[ranked],
                )
                position = {c.item_id: j for j, c in enumerate(cands)}
                mixed, teams = team_draft(
                    [cands[j].item_id for j in applied.order],
                    [cands[j].item_id for j in theirs.order],
                    need,
                    self._coin,
                )
                picks = [(position[i], 0.0) for i in mixed]
                experiment = (running.id, teams)
            else:
                picks = self._diversify(
                    request, stage, ranked, cands, applied.order, probabilities, need
                )
            final = place_pins([p for p, _ in picks], applied.pins)
            redundancy = dict(picks)
            page = final[request.offset : request.offset + request.k]
            if len(final) > request.offset + request.k:
                next_offset = request.offset + request.k
            shown = [ranked[j] for j in page]
            for j in page:
                explanation = None
                if request.explain:
                    explanation = ranker.explain(stage.x[ranked[j]])
                    if j in applied.effects:
                        explanation["rules"] = applied.effects[j]
                        explanation["adjusted_logit"] = float(applied.logits[j])
                    if request.diversity > 0 and j in redundancy:
                        explanation["diversity"] = {"redundancy": redundancy[j]}
                hits.append(_hit(cands[j], float(probabilities[j]), explanation))
        stage.timings_ms["rank"] = _ms(t)
        request_id = uuid.uuid4().hex
        if self.impressions is not None and hits:
            self.impressions.log(
                Shown(
                    request_id=request_id,
                    user_id=request.user_id,
                    item_ids=[h.id for h in hits],
                    names=stage.names,
                    features=stage.x[shown],  # a copy: one object until it is written
                    model_version=ranker.version,
                    index_version=stage.index_version,
                    ts=stage.context.now,
                    experiment_id=experiment[0] if experiment else None,
                    teams=[experiment[1].get(h.id, "pin") for h in hits] if experiment else None,
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
            next_offset,
        )

    @staticmethod
    def _diversify(
        request: SearchRequest,
        stage: Stage,
        ranked: list[int],
        cands: list[Candidate],
        order: list[int],
        probabilities: np.ndarray,
        need: int,
    ) -> list[tuple[int, float]]:
        """(index into cands, redundancy) for the first `need` of order, diversified if asked."""
        if request.diversity <= 0 and request.max_per_category is None:
            return [(j, 0.0) for j in order[:need]]
        assert stage.vectors is not None
        vectors = stage.vectors[[ranked[j] for j in order]]
        picks = diversify(
            probabilities[order],
            vectors,
            need,
            diversity=request.diversity,
            categories=[cands[j].item.category for j in order],
            max_per_category=request.max_per_category,
        )
        return [(order[p.index], p.redundancy) for p in picks]

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
        where = None
        if request.filters:
            fresh = snapshot.items if snapshot is not None else None
            where = filtering.parse(request.filters, filtering.schema_for(artifact, fresh))
        state = state or SqlState(session, utcnow(), self.watch, corpus.unknown)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        query = self.embedder.encode_query(request.q) if request.q else None
        timings["embed"] = _ms(t)
        t = time.perf_counter()
        user: UserState | None = None
        covisits: list[tuple[str, float]] = []
        if request.user_id:
            # One read: the user's row and the co-visits of the user's latest items, enough
            # of them to drop what the context will exclude (its items, without a query).
            user, covisits = state.user_with_covisits(
                request.user_id,
                self.settings.covisit_window if self.settings.covisit_candidates > 0 else 0,
                self.settings.covisit_candidates + len(request.context_items),
            )
        session_vectors: list[np.ndarray] = []
        context_items = request.context_items
        if request.similar_to:
            # Items like this one: its vector is the context, its co-visits a source.
            if not state.live_items([request.similar_to]):
                raise NotFound(f"item {request.similar_to!r}")
            context_items = (request.similar_to,)
            covisits = (
                state.covisited([request.similar_to], self.settings.covisit_candidates, set())
                + covisits
            )
            request = replace(request, context_items=context_items)
        if context_items:
            vectors, found = corpus.vectors(session, context_items)
            session_vectors = list(vectors[found])
        context = contexts.build(
            request, self.settings, state.now, query, user, session_vectors, covisits
        )
        timings["user"] = _ms(t)  # the user's row (the one SQL read), the context's vectors

        t = time.perf_counter()
        if request.similar_to:
            context.exclude.add(request.similar_to)
        candidates = gather(session, corpus, state, context, request, self.settings, include, where)
        timings["retrieve"] = _ms(t)
        t = time.perf_counter()
        x = np.zeros((0, len(self.feature_names)))
        candidate_vectors = None
        if candidates:
            candidate_vectors, _ = corpus.vectors(session, [c.item_id for c in candidates])
            x = features.compute(candidates, candidate_vectors, context, self.feature_names)
        timings["features"] = _ms(t)
        return Stage(
            artifact.version,
            candidates,
            x,
            self.feature_names,
            context,
            timings,
            candidate_vectors,
            similar=request.similar_to is not None,
        )


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
