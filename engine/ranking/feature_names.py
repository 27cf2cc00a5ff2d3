"""Ranking features φ(u, q, c): one named list, computed the same way at serving and training.

f(c) item features, g(u) user features and x(u, q, c) cross features, in that order (see
DESIGN.md). Missing parts have defined values (0 without a query, a history or a session), so
one model serves search, recommendation and cold start."""

from __future__ import annotations

from collections.abc import Sequence

BASE_FEATURES = (
    # f(c): the item
    "popularity",  # log(1 + decayed interaction weight)
    "freshness",  # 2^(-age / 1 year) from created_at; 0 when unknown
    # g(u): the user (the same for every candidate: calibrates, cannot reorder)
    "user_activity",  # log(1 + events)
    "user_tenure",  # log(1 + days since the first event)
    # x(u, q, c): cross features
    "query_sim",  # cosine(query, item): of its best window when items are chunked (MaxP)
    "query_sim_norm",  # query_sim min-max scaled over this request's candidates
    "head_sim",  # cosine(query, the item's first window: title and opening); = query_sim
    # for an item of one window
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
