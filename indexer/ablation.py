"""Feature-group ablations: drop one group of ranking features, re-train, measure again.

What each group buys is the drop in the metric without it, with the same examples, the same
fit and the same test queries. Groups follow engine.ranking.feature_names; a feature this
table does not know (a new one) is its own group, so it is still ablated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.ranking.feature_names import ATTRIBUTE_PREFIX
from engine.ranking.ranker import LinearRanker
from indexer.train import fit_ranker

FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    # the query's vector against the item's, as a score and as ranks in the candidates
    "dense": ("query_sim", "query_sim_norm", "head_sim", "ann_rank"),
    # BM25, as a score and as a rank
    "lexical": ("lexical_score", "lexical_rank"),
    # what past users did with the item: clicks, carts, ratings (the learned prior)
    "popularity": ("popularity",),
    "freshness": ("freshness",),
    # the user's history, taste vector and session
    "personal": (
        "user_activity",
        "user_tenure",
        "user_sim",
        "session_sim",
        "category_affinity",
        "tag_affinity",
        "seen_recently",
    ),
    "covisit": ("covisit_score", "covisit_rank"),
}
ATTRIBUTES_GROUP = "attributes"


def group_of(name: str) -> str:
    """The group a feature belongs to: its FEATURE_GROUPS entry, "attributes" for attr:*,
    else the feature's own name."""
    for group, members in FEATURE_GROUPS.items():
        if name in members:
            return group
    return ATTRIBUTES_GROUP if name.startswith(ATTRIBUTE_PREFIX) else name


def groups(names: Sequence[str]) -> dict[str, list[str]]:
    """The groups present in a feature list, in feature order: group → its features."""
    out: dict[str, list[str]] = {}
    for name in names:
        out.setdefault(group_of(name), []).append(name)
    return out


def without(
    x: np.ndarray, y: np.ndarray, names: Sequence[str], dropped: Sequence[str], *, l2: float
) -> LinearRanker:
    """The ranker re-trained on the same examples without the dropped features; over the full
    feature list (aligned), so it scores the same rows: a dropped feature has weight 0."""
    keep = [j for j, n in enumerate(names) if n not in set(dropped)]
    model = fit_ranker(x[:, keep], y, [names[j] for j in keep], l2=l2)
    return model.aligned(names)


def ablate(
    x: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    score: Callable[[LinearRanker], float],
    *,
    full: float,
    l2: float = 1e-3,
    known: dict[str, LinearRanker] | None = None,
) -> dict[str, dict[str, Any]]:
    """For each feature group: the metric (by score, on held-out data) of the ranker re-trained
    without it, and the change from the full model's `full`. A group constant over every
    example cannot change an order; it is marked unused instead of being re-trained.
    known: rankers already trained without some group (group → ranker), reused as they are.
    """
    constant = np.ptp(x, axis=0) < 1e-12 if len(x) else np.ones(len(names), dtype=bool)
    out: dict[str, dict[str, Any]] = {}
    for group, members in groups(names).items():
        columns = [names.index(n) for n in members]
        if constant[columns].all():
            out[group] = {"features": members, "unused": True}
            continue
        model = (known or {}).get(group) or without(x, y, names, members, l2=l2)
        value = round(score(model), 4)
        out[group] = {"features": members, "ndcg@10": value, "change": round(value - full, 4)}
    return out
