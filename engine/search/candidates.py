"""The candidates stage: every source, merged into one list in a fixed order.

Sources: the ANN index (with the delta's exact search) around the context vector, BM25 (main
and delta) for a query, items co-visited with the user's latest ones, and the most popular
items when there is no context at all. Item fields come from the corpus; whether each
candidate still exists, and its popularity, come from the state in one read for all sources.
BM25 and the version's windows (chunks) are searched in engine.search.sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.catalog.fields import ItemFields
from engine.catalog.filters import Filters
from engine.core.config import Settings
from engine.index.corpus import Corpus
from engine.search.context import Context
from engine.search.request import SearchRequest
from engine.search.sources import by_score, lexical_hits, with_windows
from engine.store.models import Item
from engine.users.decay import as_of
from engine.users.state import StateView, Stored, latest_items

# ANN candidates fetched beyond what is needed, so items deleted since the build can go.
_OVERFETCH = 16
# How far a live index (Milvus) is searched at most: Milvus's own limit on k.
_LIVE_LIMIT = 16_384


@dataclass(slots=True, eq=False)
class Candidate:
    """An item the first stage found, with where it came from and what the ranker needs."""

    item_id: str
    rank: int  # when it was found; breaks ties between equal scores
    item: ItemFields
    popularity: float = 0.0  # decayed to the time of the request
    ann_rank: int | None = None
    lexical_rank: int | None = None
    lexical_score: float = 0.0
    covisit_rank: int | None = None
    covisit_score: float = 0.0


def gather(
    session: Session,
    corpus: Corpus,
    state: StateView,
    context: Context,
    request: SearchRequest,
    settings: Settings,
    include: Sequence[str] = (),
    where: Filters | None = None,
    depth: int | None = None,
) -> list[Candidate]:
    """Candidates from every source, in found order; include: ids to score even if no source
    found them (training's random negatives, pinned items), last. where: the request's
    filters, applied in the first stage (allowed rows for ANN and BM25; a check on the fields
    of every other source's items). depth: how many each source retrieves (a tier of
    engine.search.deep; default enough for the request's page)."""
    live = _Live(session, corpus, state, settings.half_life_s, where)
    want = depth if depth is not None else max(settings.candidates, request.k + request.offset)
    category = request.category
    covisited = _covisited(context, settings)
    also = [i for i, _ in covisited] + list(include)  # checked with the first source's ids
    allowed = _allowed_rows(corpus, category, where)
    if context.vector is None:
        ids = _popular(session, state, want, context.exclude, category, where)
        live.check([*ids, *also])
        ids = [i for i in ids if i in live.stored]
        if where and len(ids) < want and allowed is not None:  # fill from the matching items
            taken = set(ids) | context.exclude
            more = [corpus.artifact.ids[r] for r in allowed[: want * 2].tolist()]
            more = [i for i in more if i not in taken]
            live.check(more)
            ids += [i for i in more if i in live.stored][: want - len(ids)]
        candidates = live.candidates(ids)
    else:
        candidates = _retrieve(
            corpus,
            context.vector,
            context.exclude,
            request.q,
            category,
            want,
            settings,
            live,
            also,
            allowed,
            where,
            request.typo_tolerance,
        )
    if covisited:
        damped = _damped(covisited, live, settings.covisit_damping, settings.covisit_candidates)
        _add_covisited(candidates, damped, category, live)
    if include:
        found = {c.item_id for c in candidates}
        for c in live.candidates([i for i in include if i not in found]):
            if category is None or c.item.category == category:
                c.rank = len(candidates)
                candidates.append(c)
    return candidates


def _allowed_rows(corpus: Corpus, category: str | None, where: Filters | None) -> np.ndarray | None:
    """Sorted rows of the index version that the category and filters allow (None: all).

    Rows come from the version's columns; an item written since the build is judged on its
    fresh fields (the delta's), so one that now matches is let in here and one that no longer
    does is dropped by the check every candidate gets (_Live).
    """
    artifact = corpus.artifact
    allowed = artifact.rows_for_category(category) if category is not None else None
    if not where:
        return allowed
    rows = artifact.filter_columns().rows(where)
    fresh = corpus.delta.items if corpus.delta is not None else {}
    if fresh:
        now_match = [
            r
            for i, f in fresh.items()
            if where.matches(f) and (r := artifact.row_of(i)) is not None
        ]
        if now_match:
            rows = np.union1d(rows, np.asarray(now_match, dtype=np.int64))
    return rows if allowed is None else np.intersect1d(rows, allowed, assume_unique=True)


class _Live:
    """Which ids exist and their popularity, read from the state once per id."""

    def __init__(
        self,
        session: Session,
        corpus: Corpus,
        state: StateView,
        half_life_s: float,
        where: Filters | None = None,
    ) -> None:
        self.session = session
        self.corpus = corpus
        self.state = state
        self.half_life_s = half_life_s
        self.where = where or None
        self.stored: dict[str, Stored] = {}  # ids that exist (and match the filters)
        self.checked: set[str] = set()

    def check(self, item_ids: Sequence[str]) -> None:
        checked = self.checked
        new = [i for i in dict.fromkeys(item_ids) if i not in checked]
        if new:
            found = self.state.live_items(new)
            if self.where is not None:  # an item that does not match is not there for us
                fields = self.corpus.fields(self.session, list(found))
                found = {
                    i: v for i, v in found.items() if i in fields and self.where.matches(fields[i])
                }
            self.stored.update(found)
            self.checked.update(new)

    def candidates(self, item_ids: Sequence[str]) -> list[Candidate]:
        """Candidates for the ids that exist, in the given order, ranked by position."""
        self.check(item_ids)
        ids = [i for i in item_ids if i in self.stored]
        fields = self.corpus.fields(self.session, ids)
        out: list[Candidate] = []
        for item_id in ids:
            item = fields.get(item_id)
            if item is not None:
                out.append(Candidate(item_id, len(out), item, self.popularity(item_id)))
        return out

    def popularity(self, item_id: str) -> float:
        value, ref, _ = self.stored[item_id]
        if not value:  # most items: no interactions, nothing to decay
            return value
        return as_of(value, ref, self.state.now, self.half_life_s)


def _retrieve(
    corpus: Corpus,
    vector: np.ndarray,
    exclude: set[str],
    q: str | None,
    category: str | None,
    want: int,
    settings: Settings,
    live: _Live,
    also: list[str],
    allowed: np.ndarray | None = None,
    where: Filters | None = None,
    typos: bool = True,
) -> list[Candidate]:
    """The top `want` live ANN neighbours of the vector (index and delta) and the BM25 hits,
    merged in that order; also: ids of other sources, checked in the same read."""
    artifact, delta = corpus.artifact, corpus.delta
    # A live index (Milvus) took every upsert and delete since the build: it finds new items
    # by id itself, and runs the filters itself.
    is_live = artifact.ann.is_live
    # Searched at Strong consistency, it also shows every write at once, so the delta's
    # vectors are neither searched nor shadow its hits. At a weaker level (Bounded) a write
    # may not show yet: the delta serves the items written since the build, as for FAISS.
    from_delta = not (is_live and artifact.ann.read_your_writes)
    if allowed is not None and allowed.size == 0 and not is_live:
        if delta is None or delta.size == 0:
            return []
    # Rows of items rewritten since the build are stale: their delta entry replaces them
    # (in BM25 always; in the ANN index unless the index shows every write itself).
    # The two sets are checked apart, never merged: after a bulk update the delta shadows
    # thousands of rows, and a union per search would cost what the search does.
    stale = delta.shadows() if delta is not None else frozenset()
    shadows = stale if from_delta else frozenset()
    limit = artifact.ann.size if allowed is None else int(allowed.size)
    if is_live:
        limit = _LIVE_LIMIT  # the collection may hold more items than the build's rows
    lexical = (
        lexical_hits(corpus, q, want, allowed, stale, exclude, category, settings, typos)
        if q
        else {}
    )
    # A live index holds new items' first windows only: their others are the delta's.
    if delta is not None and (from_delta or delta.chunk_rows is not None):
        extra = delta.search(vector, want, category)
    else:
        extra = []
    extra = [(i, sc) for i, sc in extra if i not in exclude]
    # Enough to fill `want` after what is skipped; few shadowed rows rank this high, so a big
    # delta adds at most `want` more (the loop below fetches further when they do).
    fetch_k = min(limit, want + _OVERFETCH + len(exclude) + min(len(shadows), want))
    ids = artifact.ids
    while True:
        pairs: list[tuple[str, float]] = []
        floor = -np.inf  # the lowest score fetched from the index; unfetched rows score below
        if is_live:
            hits = artifact.ann.search_ids(vector, fetch_k, category=category, where=where)
            pairs = [(i, sc) for i, sc in hits if i not in exclude and i not in shadows]
            if len(hits) < fetch_k:
                limit = fetch_k  # the collection has nothing more
            elif hits:
                floor = hits[-1][1]
        elif limit > 0:
            scores, rows = artifact.ann.search(vector, fetch_k, allowed_rows=allowed)
            pairs = [
                (i, sc)
                for sc, r in zip(scores[0].tolist(), rows[0].tolist(), strict=True)
                if r >= 0 and (i := ids[r]) not in exclude and i not in shadows
            ]
            if rows.size and rows[0][-1] >= 0:  # a full list: rows past it may remain
                floor = float(scores[0][-1])
        if artifact.chunks is not None:  # items whose best window is not their first
            windows = artifact.chunks.search(vector, fetch_k, allowed)
            pairs = with_windows(pairs, windows, ids, exclude, stale)
        ann_ids = [i for i, _ in sorted(pairs + extra, key=by_score, reverse=True)]
        merged = list(dict.fromkeys([*ann_ids, *lexical]))
        # Done when `want` live items score at least the floor (no row not fetched can come
        # before them), or nothing more is left to fetch. Otherwise many rows were skipped
        # (deleted since the build, or shadowed by the delta): look further down.
        # Certain: every ANN id but the delta's that score below the floor and that the
        # index (or its windows) did not return as well (nearly always none).
        below = {i for i, sc in extra if sc < floor}
        uncertain = below - dict(pairs).keys() if below else below
        stored = live.stored  # the ids that exist
        # Which exist: the best `want` ANN ids first, with the BM25 hits and the other
        # sources' ids. When all of those exist and are certain, no ANN id below them is
        # kept (only BM25's, checked already), so the rest (about as many again, the
        # windows' items mostly) are not looked up; otherwise every id is, as the loop asks.
        top = ann_ids[:want]
        live.check([*top, *lexical, *also])
        if len(top) < want or not all([i in stored and i not in uncertain for i in top]):
            live.check(ann_ids)
            certain = [i for i in dict.fromkeys(ann_ids) if i in stored and i not in uncertain]
            if fetch_k < limit and len(certain) < want:
                fetch_k = min(limit, fetch_k * 4)
                continue
        break
    ann_rank = set(ann_ids)
    kept: list[tuple[int, str, int | None]] = []  # (position in merged, id, ANN rank)
    kept_ann = 0
    checked = live.checked
    for position, item_id in enumerate(merged):
        if item_id not in stored:
            # Gone; or an ANN id below `want` live ones, not looked up: it counts in the
            # ranks of the ANN ids below it that BM25 keeps, as it nearly always exists.
            if item_id in ann_rank and item_id not in checked:
                kept_ann += 1
            continue
        rank = None
        if item_id in ann_rank:
            kept_ann += 1
            if kept_ann > want and item_id not in lexical:
                continue
            rank = kept_ann - 1
        kept.append((position, item_id, rank))
    fields = corpus.fields(live.session, [i for _, i, _ in kept]).get
    popularity = live.popularity
    absent = (None, 0.0)  # no BM25 hit: (lexical rank, lexical score)
    out: list[Candidate] = []
    for position, item_id, rank in kept:
        item = fields(item_id)
        if item is not None:
            lexical_rank, lexical_score = lexical.get(item_id, absent)
            out.append(
                Candidate(
                    item_id,
                    position,
                    item,
                    popularity(item_id),
                    rank,
                    lexical_rank,
                    lexical_score,
                )
            )
    return out


def _covisited(context: Context, settings: Settings) -> list[tuple[str, float]]:
    """Items co-visited with the user's latest ones (or with the item a similar-items request
    names), with their summed weight, most first; the state read them with the user
    (StateView.user_with_covisits) or for the item (StateView.covisited). All of them: the
    damped weight orders them (_damped), and keeps covisit_candidates."""
    if not context.covisits:
        return []
    skip = set(context.exclude)
    if context.user is not None:
        skip |= set(latest_items(context.user, settings.covisit_window))
    return [(i, w) for i, w in context.covisits if i not in skip]


def _damped(
    covisited: list[tuple[str, float]], live: _Live, damping: float, limit: int
) -> list[tuple[str, float]]:
    """The co-visited items that exist, each weight divided by (1 + the item's events in
    all)^damping, best first, at most `limit`.

    A raw count favours the items everyone touches: the most co-visited with anything are
    the most popular. Damped, an item that co-occurs with the user's latest items more than
    its popularity explains ranks first (item-to-item lift). The count is all-time, as the
    co-visits are, so the two are on one footing at any moment.
    """
    live.check([i for i, _ in covisited])
    stored = live.stored
    out: dict[str, float] = {}
    for item_id, weight in covisited:
        found = stored.get(item_id)
        if found is not None and item_id not in out:  # the first (largest) of a repeated id
            out[item_id] = weight / (1.0 + found[2]) ** damping if damping else weight
    return sorted(out.items(), key=lambda kv: -kv[1])[:limit]  # stable: ties keep raw order


def _add_covisited(
    candidates: list[Candidate],
    covisited: list[tuple[str, float]],
    category: str | None,
    live: _Live,
) -> None:
    """Merge the co-visited items in (after the others) and mark every candidate among them."""
    by_id = {c.item_id: c for c in candidates}
    for c in live.candidates([i for i, _ in covisited if i not in by_id]):
        if category is None or c.item.category == category:
            c.rank = len(candidates)
            candidates.append(c)
            by_id[c.item_id] = c
    for rank, (item_id, weight) in enumerate(covisited):
        hit = by_id.get(item_id)
        if hit is not None:
            hit.covisit_rank, hit.covisit_score = rank, weight


def _popular(
    session: Session,
    state: StateView,
    want: int,
    exclude: set[str],
    category: str | None,
    where: Filters | None = None,
) -> list[str]:
    if where:  # the filters drop some after the read: read more
        want *= 4
    ids = state.most_popular(want, exclude, category)
    if len(ids) < want:  # a young catalog: fill with the newest items
        query = select(Item.id).order_by(Item.updated_at.desc(), Item.id).limit(want * 2)
        if category is not None:
            query = query.where(Item.category == category)
        taken = set(ids) | exclude
        ids += [i for i in session.scalars(query) if i not in taken][: want - len(ids)]
    return ids
