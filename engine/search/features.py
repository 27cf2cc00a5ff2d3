"""The features stage: φ(u, q, c) for every candidate, named as engine.ranking.feature_names
lists them, computed the same way at serving and training."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from sqlalchemy.orm import Session

from engine.core.contract import finite_float
from engine.index.corpus import Corpus
from engine.ranking.feature_names import ATTRIBUTE_PREFIX, BASE_FEATURES
from engine.search.candidates import Candidate
from engine.search.context import Context
from engine.users.profile import UserState


def compute(
    candidates: list[Candidate],
    item_vectors: np.ndarray,
    context: Context,
    names: Sequence[str] = BASE_FEATURES,
    query_sims: np.ndarray | None = None,
) -> np.ndarray:
    """(n_candidates, len(names)) float64; item_vectors is (n, dim) unit float32; query_sims:
    each candidate's similarity to the query when it is not its vector's (the best of its
    chunks: engine.index.chunks).

    Similarities are matrix products; what each candidate carries is read in one pass over
    the candidates (a pass per feature cost more than the products at 100+ candidates).
    """
    n = len(candidates)
    col = {name: j for j, name in enumerate(names)}
    x = np.zeros((n, len(names)), dtype=np.float64)
    if n == 0:
        return x

    def put(name: str, values: np.ndarray | Sequence[float] | float) -> None:
        if name in col:
            x[:, col[name]] = values

    if context.query is not None:
        head = item_vectors @ context.query
        sims = head if query_sims is None else query_sims
        put("query_sim", sims)
        put("head_sim", head)
        spread = float(sims.max() - sims.min())
        put("query_sim_norm", (sims - sims.min()) / spread if spread > 1e-9 else 1.0)
    if context.user_vector is not None:
        put("user_sim", item_vectors @ context.user_vector)
    if context.session is not None:
        put("session_sim", item_vectors @ context.session)

    user = context.user
    now = context.now
    year_s = 365.0 * 86_400.0
    log1p = math.log1p
    weight = _rank_weight
    rows = []
    for c in candidates:  # what every search ranks on: the sources' ranks and scores, the item
        ann, lex, co, popular, created = (
            c.ann_rank,
            c.lexical_rank,
            c.covisit_rank,
            c.popularity,
            c.item.created_at,
        )
        rows.append(
            (  # rank features: 1 / log2(2 + rank), 0 when absent
                c.lexical_score,
                0.0 if ann is None else weight(ann),
                0.0 if lex is None else weight(lex),
                log1p(c.covisit_score) if c.covisit_score else 0.0,
                0.0 if co is None else weight(co),
                log1p(popular) if popular > 0.0 else 0.0,
                0.0
                if created is None
                else 2.0 ** (-max(0.0, (now - created).total_seconds()) / year_s),
            )
        )
    (
        lexical,
        ann_rank,
        lexical_rank,
        covisit_score,
        covisit_rank,
        popularity,
        freshness,
    ) = np.array(rows, dtype=np.float64).T
    best_lexical = float(lexical.max())
    if best_lexical > 0:
        put("lexical_score", lexical / best_lexical)
    put("ann_rank", ann_rank)
    put("lexical_rank", lexical_rank)
    put("covisit_score", covisit_score)
    put("covisit_rank", covisit_rank)
    put("popularity", popularity)
    put("freshness", freshness)
    if user is not None:
        put("user_activity", math.log1p(user.event_count))
        if user.first_ts is not None:
            days = max(0.0, (now - user.first_ts).total_seconds() / 86_400.0)
            put("user_tenure", math.log1p(days))
        _put_affinities(put, candidates, user)

    for name, j in col.items():
        if name.startswith(ATTRIBUTE_PREFIX):
            attribute = name[len(ATTRIBUTE_PREFIX) :]
            x[:, j] = [_number(c.item.attributes.get(attribute)) for c in candidates]
    return x


def _put_affinities(
    put: Callable[[str, Sequence[float]], None], candidates: list[Candidate], user: UserState
) -> None:
    """The user × item features: the user's affinity to each item's category and tags, and
    whether the user saw it recently (a pass only for what the user has)."""
    categories = user.normalized_affinity("category")
    tags = user.normalized_affinity("tag")
    seen = {r[0] for r in user.recent}
    if categories:
        put("category_affinity", [categories.get(c.item.category or "", 0.0) for c in candidates])
    if tags:
        put(
            "tag_affinity",
            [
                sum([tags.get(t, 0.0) for t in item_tags]) / len(item_tags)
                if (item_tags := c.item.tags)
                else 0.0
                for c in candidates
            ],
        )
    if seen:
        put("seen_recently", [1.0 if c.item_id in seen else 0.0 for c in candidates])


@lru_cache(maxsize=4096)
def _rank_weight(rank: int) -> float:
    """1 / log2(2 + rank): a rank feature's value."""
    return 1.0 / math.log2(2 + rank)


def _number(value: object) -> float:
    """An attribute as a feature: booleans 0/1, finite numbers as they are, the rest 0."""
    if isinstance(value, bool):
        return float(value)
    return finite_float(value) or 0.0


def of_candidates(
    session: Session,
    corpus: Corpus,
    candidates: list[Candidate],
    context: Context,
    names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The features stage: (features (n, len(names)), the candidates' unit vectors (n, dim) or
    None when there are no candidates)."""
    if not candidates:
        return np.zeros((0, len(names))), None
    ids = [c.item_id for c in candidates]
    places = corpus.places(ids)
    vectors, _ = corpus.vectors(session, ids, places)
    query = context.query
    sims = corpus.query_sims(ids, vectors, query, places) if query is not None else None
    return compute(candidates, vectors, context, names, sims), vectors
