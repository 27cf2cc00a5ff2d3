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
from datetime import datetime

from sqlalchemy.orm import Session

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
from engine.search import features
from engine.search.candidates import gather
from engine.search.diversify import diversified
from engine.search.page import Page, page
from engine.search.rank import interleave, rank
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
        # "Now" for decay, freshness and rule windows: naive UTC, injectable for tests.
        self.clock = clock
        self._coin = random.Random()  # which searches an experiment takes
        self.feature_names = feature_names(settings.attribute_features())
        # Items' popularity and deletions, followed per process (None: read per search).
        self.watch = watch

    @property
    def store(self) -> IndexStore:
        return self.live.store

    def artifact(self) -> IndexArtifact:
        return self.live.get()

    def search(self, session: Session, request: SearchRequest) -> SearchOut:
        """A page of results for the request; raises NotReady before the first build,
        InvalidInput for filters the catalog cannot answer, NotFound for an unknown similar_to.
        """
        started = time.perf_counter()
        rules = [] if request.similar_to else live_rules(self.rules(), self.clock(), request.q)
        stage = self.first_stage(session, request, include=pinned_ids(rules))
        t = time.perf_counter()
        ranked = rank(stage, self.ranker().aligned(stage.names), rules)
        shown = Page([], [], None)
        teams: dict[str, Side] | None = None
        experiment: Running | None = None
        if ranked is not None:
            need = request.offset + request.k + 1  # one more says whether a next page exists
            experiment = self._experiment_for(request)
            if experiment is not None:
                picks, teams = interleave(stage, ranked, rules, experiment, need, self._coin)
            else:
                picks = diversified(request, stage, ranked, need)
            shown = page(request, stage, ranked, picks)
        stage.timings_ms["rank"] = _ms(t)
        response = SearchOut(
            results=shown.hits,
            index_version=stage.index_version,
            took_ms=_ms(started),
            mode=stage.mode,
            request_id=uuid.uuid4().hex,
            next_offset=shown.next_offset,
            timings_ms=stage.timings_ms if request.explain or request.timings else None,
        ).timed(stage.timings_ms)
        if ranked is not None:
            self._log(request, stage, ranked.ranker, shown, response, experiment, teams)
        return response

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
        where = _filters(request, artifact, snapshot)
        state = state or SqlState(session, self.clock(), self.watch, corpus.unknown)
        timings: dict[str, float] = {}
        t = time.perf_counter()
        query = self.embedder.encode_query(request.q) if request.q else None
        timings["embed"] = _ms(t)
        t = time.perf_counter()
        context = contexts.read(session, request, self.settings, state, corpus, query)
        timings["user"] = _ms(t)  # the user's row (one read), the context's vectors
        t = time.perf_counter()
        candidates = gather(session, corpus, state, context, request, self.settings, include, where)
        timings["retrieve"] = _ms(t)
        t = time.perf_counter()
        x, vectors = features.of_candidates(
            session, corpus, candidates, context, self.feature_names
        )
        timings["features"] = _ms(t)
        return Stage(
            index_version=artifact.version,
            candidates=candidates,
            x=x,
            names=self.feature_names,
            context=context,
            timings_ms=timings,
            vectors=vectors,
            similar=request.similar_to is not None,
        )

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
                features=stage.x[shown.rows],  # a copy: one object until it is written
                model_version=ranker.version,
                index_version=stage.index_version,
                ts=stage.context.now,
                experiment_id=experiment.id if experiment is not None else None,
                teams=[teams.get(h.id, "pin") for h in shown.hits] if teams is not None else None,
            )
        )


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
