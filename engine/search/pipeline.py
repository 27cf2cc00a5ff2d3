"""The search pipeline: a request through one stage module after another.

    context     engine.search.context      query ⊕ user ⊕ session; the user's row (one read)
    candidates  engine.search.candidates   ANN, BM25, co-visitation or popular items, merged
    features    engine.search.features     φ(u, q, c) per candidate
    rank        engine.search.rank         σ(w·φ + b), then the rules (hide, boost, bury, pins),
                                           or interleaved with a running experiment's model
    diversify   engine.search.diversify    MMR and the category cap, when asked
    page        engine.search.page         pins placed, offset..offset+k, explanations

What was shown goes to engine.users.impressions. Item fields and vectors come from the
published index version and its delta (engine.index.corpus). A search by query or by user
reads SQL at most twice (engine.users.state): the user's row with the co-visits of the user's
latest items, then the items deleted since this process's ItemWatch last looked (nearly always
none); popularity and older deletions come from that watch. A search with nothing to go on
also reads the most popular items, similar items the item's co-visits, and an id neither the
version nor its delta holds (written within the last poll) falls back to SQL.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy.orm import Session

from engine.catalog.facets import check as check_facets
from engine.catalog.filters import Filters
from engine.catalog.filters import parse as parse_filters
from engine.catalog.item_watch import ItemWatch
from engine.core.clock import utcnow
from engine.core.config import Settings
from engine.encoder.embedder import Embedder
from engine.index.artifact import IndexArtifact, IndexStore, LiveIndex
from engine.index.corpus import Corpus
from engine.index.delta import Delta, DeltaSnapshot
from engine.index.vectors import ItemVectors
from engine.ranking.experiments import Running
from engine.ranking.feature_names import feature_names
from engine.ranking.interleave import Side
from engine.ranking.ranker import LinearRanker
from engine.ranking.rules import Rule, live_rules, pinned_ids
from engine.search import context as contexts
from engine.search import features, selection
from engine.search.candidates import gather
from engine.search.deep import Walk, depths
from engine.search.highlight import Highlighter
from engine.search.page import Page, page, with_text
from engine.search.rank import Ranked, interleave, rank
from engine.search.request import SearchRequest
from engine.search.response import SearchOut
from engine.search.stage import Stage
from engine.users.impressions import ImpressionLog, Shown
from engine.users.state import SqlState, StateView

__all__ = ["Searcher", "Stage"]


class Searcher:
    """Serves searches from the live index version with the live ranking model.

    Everything but the settings and the encoder has a default for a process that only
    searches (tests, evaluation): the index CURRENT names, the prior ranker, no rules, no
    experiment, no impressions, no delta, and the real clock.
    """

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        *,
        live: LiveIndex | None = None,
        vectors: ItemVectors | None = None,
        ranker: Callable[[], LinearRanker] | None = None,
        impressions: ImpressionLog | None = None,
        delta: Delta | None = None,
        rules: Callable[[], list[Rule]] | None = None,
        experiments: Callable[[], Running | None] | None = None,
        watch: ItemWatch | None = None,
        clock: Callable[[], datetime] = utcnow,
        encoder_for: Callable[[IndexArtifact], Embedder] | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        # The encoder of a version's vectors: queries are encoded by the one that built the
        # index they search (a tuned encoder's index, engine.index.encoder_store).
        self.encoder_for = encoder_for or (lambda _artifact: embedder)
        self.live = live or LiveIndex(
            IndexStore(settings.index_dir), settings.index_poll_s, embedder.name
        )
        self.vectors = vectors or ItemVectors(self.live, lambda _name: embedder)
        prior = LinearRanker.prior()
        self.ranker = ranker or (lambda: prior)
        self.impressions = impressions
        self.delta = delta
        self.rules = rules or list
        self.experiments = experiments or (lambda: None)
        # "Now" for decay, freshness and rule windows: naive UTC, injectable for tests.
        self.clock = clock
        self._coin = random.Random()  # which searches an experiment takes
        self.feature_names = feature_names(settings.attribute_features())
        # Items' popularity and deletions, followed per process (None: read per search).
        self.watch = watch
        self.highlighter = Highlighter()

    @property
    def store(self) -> IndexStore:
        return self.live.store

    def artifact(self) -> IndexArtifact:
        return self.live.get()

    def search(self, session: Session, request: SearchRequest) -> SearchOut:
        """A page of results for the request; raises NotReady before the first build,
        InvalidInput for filters or facets the catalog cannot answer, NotFound for an unknown
        similar_to. Pages hold: see engine.search.deep."""
        started = time.perf_counter()
        rules = [] if request.similar_to else self._live_rules(request.q)
        ready = self.prepare(session, request)
        ranker = self.ranker()  # one model for every tier, even if another is promoted meanwhile
        need = request.offset + request.k + 1  # one more says whether a next page exists
        experiment = self._experiment_for(request)
        walk = Walk(request)
        teams: dict[str, Side] | None = None
        first: tuple[Stage, Ranked] | None = None
        for depth in depths(self.settings.candidates):
            stage = self.stage_at(session, ready, request, pinned_ids(rules), depth)
            t = time.perf_counter()
            ranked = rank(stage, ranker.aligned(stage.names), rules)
            if ranked is None:  # nothing found at all (a deeper tier finds what this one did)
                break
            first = first or (stage, ranked)
            if experiment is not None:  # first pages only, one tier
                picks, teams = interleave(stage, ranked, rules, experiment, need, self._coin)
                walk.interleaved(stage, ranked, picks)
                _add(ready.timings, "rank", _ms(t))
                break
            fresh = walk.add(stage, ranked, need)
            _add(ready.timings, "rank", _ms(t))
            if len(walk.placed) >= need or not fresh:
                break
        shown = page(request, walk) if first is not None else Page([], [], None)
        with_text(session, request, ready.corpus, shown.hits, self.highlighter)
        t = time.perf_counter()
        selected = selection.count(
            ready.corpus,
            request.category,
            ready.where,
            ready.context.exclude,
            ready.state.deleted() if isinstance(ready.state, SqlState) else [],
            ready.context.vector is not None,
            request.facets,
            request.max_per_category,
        )
        ready.timings["total"] = _ms(t)
        counts = selected.counts
        response = SearchOut(
            results=shown.hits,
            index_version=ready.corpus.version,
            took_ms=_ms(started),
            mode="similar" if request.similar_to is not None else ready.context.mode,
            request_id=uuid.uuid4().hex,
            next_offset=shown.next_offset,
            total=selected.total,
            total_relation=selected.relation,
            facets=counts.facets if counts is not None else None,
            facet_stats=counts.stats if counts is not None and counts.stats else None,
            timings_ms=ready.timings if request.explain or request.timings else None,
        ).timed(ready.timings)
        if first is not None:
            self._log(request, first[0], first[1].ranker, shown, response, experiment, teams)
        return response

    def prepare(
        self, session: Session, request: SearchRequest, state: StateView | None = None
    ) -> Ready:
        """What every tier of one search shares: the version and its delta, the filters, the
        state, the query's vector and the user's context (one read)."""
        artifact = self.live.get()
        snapshot = self.delta.snapshot(artifact) if self.delta is not None else None
        corpus = Corpus(artifact, snapshot, self.vectors)
        where = _filters(request, artifact, snapshot)
        if request.facets:  # before any work: an unknown field is the client's to fix
            fresh = snapshot.items if snapshot is not None else None
            check_facets(request.facets, artifact.filter_schema(fresh))
        state = state or SqlState(session, self.clock(), self.watch, corpus.unknown)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        query = self.encoder_for(artifact).encode_query(request.q) if request.q else None
        timings["embed"] = _ms(t)
        t = time.perf_counter()
        context = contexts.read(session, request, self.settings, state, corpus, query)
        timings["user"] = _ms(t)  # the user's row (one read), the context's vectors
        return Ready(corpus, where, state, context, timings)

    def stage_at(
        self,
        session: Session,
        ready: Ready,
        request: SearchRequest,
        include: Sequence[str] = (),
        depth: int | None = None,
    ) -> Stage:
        """The candidates every source finds to `depth`, merged, with their features."""
        t = time.perf_counter()
        candidates = gather(
            session,
            ready.corpus,
            ready.state,
            ready.context,
            request,
            self.settings,
            include,
            ready.where,
            depth,
        )
        _add(ready.timings, "retrieve", _ms(t))
        t = time.perf_counter()
        x, vectors = features.of_candidates(
            session, ready.corpus, candidates, ready.context, self.feature_names
        )
        _add(ready.timings, "features", _ms(t))
        return Stage(
            index_version=ready.corpus.version,
            candidates=candidates,
            x=x,
            names=self.feature_names,
            context=ready.context,
            timings_ms=ready.timings,
            vectors=vectors,
            similar=request.similar_to is not None,
        )

    def first_stage(
        self,
        session: Session,
        request: SearchRequest,
        include: Sequence[str] = (),
        state: StateView | None = None,
    ) -> Stage:
        """Candidates from every source, merged, with their features, to the depth the
        request's page needs (training and evaluation read it).

        include: item ids to score even if no source found them (random negatives), last.
        state: users and items as of some moment; default the live state in SQL, now.
        """
        ready = self.prepare(session, request, state)
        return self.stage_at(session, ready, request, include)

    def _live_rules(self, query: str | None) -> list[Rule]:
        """The rules live now for this query; none without a rule at all (most catalogs), and
        then the query's text is not normalized to match them."""
        every = self.rules()
        return live_rules(every, self.clock(), query) if every else []

    def _experiment_for(self, request: SearchRequest) -> Running | None:
        """The running experiment when this search falls in its share (first pages only)."""
        if request.offset != 0 or request.similar_to:
            return None
        running = self.experiments()
        if running is not None and self._coin.random() < running.traffic:
            return running
        return None

    def _log(
        self,
        request: SearchRequest,
        stage: Stage,
        ranker: LinearRanker,
        shown: Page,
        response: SearchOut,
        experiment: Running | None,
        teams: dict[str, Side] | None,
    ) -> None:
        """What the search showed, with its features, for training (off the request path)."""
        if self.impressions is None or not shown.hits:
            return
        self.impressions.log(
            Shown(
                request_id=response.request_id,
                user_id=request.user_id,
                item_ids=[h.id for h in shown.hits],
                names=stage.names,
                features=np.stack([p.features for p in shown.shown]),
                model_version=ranker.version,
                index_version=stage.index_version,
                ts=stage.context.now,
                experiment_id=experiment.id if experiment is not None else None,
                teams=[teams.get(h.id, "pin") for h in shown.hits] if teams is not None else None,
                query=request.q or None,
            )
        )


@dataclass
class Ready:
    """What the tiers of one search share (Searcher.prepare)."""

    corpus: Corpus
    where: Filters | None
    state: StateView
    context: contexts.Context
    timings: dict[str, float]


def _add(timings: dict[str, float], stage: str, ms: float) -> None:
    timings[stage] = round(timings.get(stage, 0.0) + ms, 3)


def _filters(
    request: SearchRequest, artifact: IndexArtifact, snapshot: DeltaSnapshot | None
) -> Filters | None:
    """The request's filters checked against what the version and its delta hold."""
    if not request.filters:
        return None
    fresh = snapshot.items if snapshot is not None else None
    return parse_filters(request.filters, artifact.filter_schema(fresh))


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1e3, 3)
