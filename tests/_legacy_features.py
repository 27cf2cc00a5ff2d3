"""engine/features.py as it was before issue 9 (for tests/_legacy_search.py only).

Ranking features φ(u, q, c): one named list, computed the same way at serving and training.

f(c) item features, g(u) user features and x(u, q, c) cross features, in that order (see
DESIGN.md). Missing parts have defined values (0 without a query, a history or a session), so
one model serves search, recommendation and cold start.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import numpy as np

from engine.users.profile import UserState

BASE_FEATURES = (
    # f(c): the item
    "popularity",  # log(1 + decayed interaction weight)
    "freshness",  # 2^(-age / 1 year) from created_at; 0 when unknown
    # g(u): the user (the same for every candidate: calibrates, cannot reorder)
    "user_activity",  # log(1 + events)
    "user_tenure",  # log(1 + days since the first event)
    # x(u, q, c): cross features
    "query_sim",  # cosine(query, item)
    "query_sim_norm",  # query_sim min-max scaled over this request's candidates
    "lexical_score",  # BM25 / the best BM25 of this request
    "user_sim",  # cosine(user taste vector, item)
    "session_sim",  # cosine(mean of the session's items, item)
    "category_affinity",  # the user's decayed affinity to the item's category, in [-1, 1]
    "tag_affinity",  # mean affinity to the item's tags, in [-1, 1]
    "seen_recently",  # 1 if the user viewed or clicked it recently
    "ann_rank",  # 1 / log2(2 + rank) in the vector candidates; 0 if not there
    "lexical_rank",  # 1 / log2(2 + rank) in the BM25 candidates; 0 if not there
    "covisit_score",  # log(1 + co-visits with the user's latest items)
    "covisit_rank",  # 1 / log2(2 + rank) among the co-visited candidates; 0 if not there
)
ATTRIBUTE_PREFIX = "attr:"


def feature_names(numeric_attributes: Sequence[str] = ()) -> tuple[str, ...]:
    """The base features plus one per configured numeric attribute ("attr:<name>")."""
    return BASE_FEATURES + tuple(f"{ATTRIBUTE_PREFIX}{a}" for a in numeric_attributes)


@dataclass
class Candidate:
    """An item the first stage found, with where it came from and what the ranker needs.

    tags and attributes arrive as JSON text and are decoded on first use: most candidates
    never need their attributes, and decoding is a large share of a search's own cost.
    """

    item_id: str
    rank: int
    title: str
    category: str | None
    popularity: float  # decayed to the time of the request
    popularity_ref: datetime | None = None  # when the stored popularity was last updated
    created_at: datetime | None = None
    tags_json: str | None = None
    attributes_json: str | None = None
    ann_rank: int | None = None
    lexical_rank: int | None = None
    lexical_score: float = 0.0
    covisit_rank: int | None = None
    covisit_score: float = 0.0

    @cached_property
    def tags(self) -> list[str]:
        return list(json.loads(self.tags_json)) if self.tags_json else []

    @cached_property
    def attributes(self) -> dict[str, object]:
        return dict(json.loads(self.attributes_json)) if self.attributes_json else {}


@dataclass
class ContextParts:
    query: np.ndarray | None
    user: UserState | None
    user_vector: np.ndarray | None
    session: np.ndarray | None
    now: datetime


def _rank_feature(rank: int | None) -> float:
    return 0.0 if rank is None else 1.0 / math.log2(2 + rank)


def compute(
    candidates: list[Candidate],
    item_vectors: np.ndarray,
    parts: ContextParts,
    names: Sequence[str] = BASE_FEATURES,
) -> np.ndarray:
    """(n_candidates, len(names)) float64; item_vectors is (n, dim) unit float32."""
    n = len(candidates)
    col = {name: j for j, name in enumerate(names)}
    x = np.zeros((n, len(names)), dtype=np.float64)
    if n == 0:
        return x

    def put(name: str, values: np.ndarray | list[float] | float) -> None:
        if name in col:
            x[:, col[name]] = values

    if parts.query is not None:
        sims = item_vectors @ parts.query
        put("query_sim", sims)
        spread = float(sims.max() - sims.min())
        put("query_sim_norm", (sims - sims.min()) / spread if spread > 1e-9 else 1.0)
    if parts.user_vector is not None:
        put("user_sim", item_vectors @ parts.user_vector)
    if parts.session is not None:
        put("session_sim", item_vectors @ parts.session)
    best_lexical = max((c.lexical_score for c in candidates), default=0.0)
    if best_lexical > 0:
        put("lexical_score", [c.lexical_score / best_lexical for c in candidates])
    put("ann_rank", [_rank_feature(c.ann_rank) for c in candidates])
    put("lexical_rank", [_rank_feature(c.lexical_rank) for c in candidates])
    put("covisit_score", [math.log1p(c.covisit_score) for c in candidates])
    put("covisit_rank", [_rank_feature(c.covisit_rank) for c in candidates])
    put("popularity", [math.log1p(max(c.popularity, 0.0)) for c in candidates])
    year_s = 365.0 * 86_400.0
    put(
        "freshness",
        [
            0.0
            if c.created_at is None
            else 2.0 ** (-max(0.0, (parts.now - c.created_at).total_seconds()) / year_s)
            for c in candidates
        ],
    )

    user = parts.user
    if user is not None:
        put("user_activity", math.log1p(user.event_count))
        if user.first_ts is not None:
            days = max(0.0, (parts.now - user.first_ts).total_seconds() / 86_400.0)
            put("user_tenure", math.log1p(days))
        categories = user.normalized_affinity("category")
        tags = user.normalized_affinity("tag")
        seen = {r[0] for r in user.recent}
        put("category_affinity", [categories.get(c.category or "", 0.0) for c in candidates])
        if tags:
            put(
                "tag_affinity",
                [
                    sum(tags.get(t, 0.0) for t in c.tags) / len(c.tags) if c.tags else 0.0
                    for c in candidates
                ],
            )
        put("seen_recently", [1.0 if c.item_id in seen else 0.0 for c in candidates])

    for name, j in col.items():
        if name.startswith(ATTRIBUTE_PREFIX):
            attribute = name[len(ATTRIBUTE_PREFIX) :]
            x[:, j] = [_number(c.attributes.get(attribute)) for c in candidates]
    return x


def _number(value: object) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return 0.0
