"""Ranking features φ(u, q, c): one named list, computed the same way wherever a score is made.

Missing parts have defined values (0 without a query, a history or a session), so one model
serves search, recommendation and cold start.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from engine.users import UserState

FEATURES = (
    "query_sim",  # cosine(query, item)
    "user_sim",  # cosine(user taste vector, item)
    "session_sim",  # cosine(mean of the session's items, item)
    "category_affinity",  # the user's decayed affinity to the item's category, in [-1, 1]
    "tag_affinity",  # mean affinity to the item's tags, in [-1, 1]
    "popularity",  # log(1 + decayed interaction weight)
    "seen_recently",  # 1 if the user viewed or clicked it recently
    "retrieval_rank",  # 1 / log2(2 + rank) of the first stage
)


@dataclass
class Candidate:
    """An item the first stage found, with what the reranker needs to score it.

    tags and attributes arrive as JSON text and are decoded on first use: most candidates
    never need their attributes, and decoding is a large share of a search's own cost.
    """

    item_id: str
    rank: int
    title: str
    category: str | None
    popularity: float  # decayed to the time of the request
    tags_json: str | None = None
    attributes_json: str | None = None

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


def compute(
    candidates: list[Candidate],
    item_vectors: np.ndarray,
    parts: ContextParts,
) -> np.ndarray:
    """(n_candidates, len(FEATURES)) float64; item_vectors is (n, dim) unit float32."""
    n = len(candidates)
    x = np.zeros((n, len(FEATURES)), dtype=np.float64)
    if n == 0:
        return x
    for column, vector in ((0, parts.query), (1, parts.user_vector), (2, parts.session)):
        if vector is not None:
            x[:, column] = item_vectors @ vector
    categories = parts.user.normalized_affinity("category") if parts.user else {}
    tags = parts.user.normalized_affinity("tag") if parts.user else {}
    seen = {r[0] for r in parts.user.recent} if parts.user else set()
    for i, c in enumerate(candidates):
        if c.category is not None:
            x[i, 3] = categories.get(c.category, 0.0)
        if tags and c.tags:
            x[i, 4] = sum(tags.get(t, 0.0) for t in c.tags) / len(c.tags)
        x[i, 5] = math.log1p(max(c.popularity, 0.0))
        x[i, 6] = 1.0 if c.item_id in seen else 0.0
        x[i, 7] = 1.0 / math.log2(2 + c.rank)
    return x
