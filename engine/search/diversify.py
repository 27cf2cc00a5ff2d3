"""The diversify stage, after ranking: maximal marginal relevance and a cap per category.

MMR (Carbonell & Goldstein, 1998) picks, one at a time, the candidate that maximizes

    (1 − λ) · relevance(c) − λ · max_{s ∈ picked} cosine(c, s)

with λ = the request's `diversity` (0 = the ranker's order, 1 = as different as possible).
Relevance is the ranker's probability, in [0, 1], on the same scale as a cosine's useful
range, so one λ means the same thing for every query. The cap skips a candidate whose
category already has `max_per_category` picks; items without a category are never capped.
A cap can leave fewer than k results: a user who asked for at most 2 per category would
rather have 6 results than a seventh from a third-time category.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.search.rank import Ranked
from engine.search.request import SearchRequest
from engine.search.stage import Stage


@dataclass(frozen=True, slots=True)
class Pick:
    index: int  # into the candidate list
    redundancy: float  # max cosine to an earlier pick (0 for the first); what MMR charged


def diversify(
    relevance: np.ndarray,
    vectors: np.ndarray,
    k: int,
    *,
    diversity: float = 0.0,
    categories: Sequence[str | None] | None = None,
    max_per_category: int | None = None,
    picked: np.ndarray | None = None,
    counts: dict[str, int] | None = None,
) -> list[Pick]:
    """Up to k candidates in MMR order; relevance (n,) and vectors (n, dim) unit rows.

    With diversity 0 and no cap this is the relevance order (ties kept in input order).
    picked: (m, dim) vectors of results already placed above these (a deeper tier of the
    same search, engine.search.deep); counts: their categories' counts, updated in place.
    """
    n = len(relevance)
    if vectors.shape[0] != n:
        raise ValueError(f"{n} relevance values but {vectors.shape[0]} vectors")
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be within 0..1, got {diversity}")
    relevance = np.asarray(relevance, dtype=np.float64)
    capped = max_per_category is not None and categories is not None
    counts = {} if counts is None else counts
    available = np.ones(n, dtype=bool)
    redundancy = np.zeros(n)  # max cosine of each candidate to the picks so far
    above = picked is not None and len(picked) > 0
    if above and diversity > 0.0 and n:
        redundancy = (vectors @ np.asarray(picked).T).max(axis=1).astype(np.float64)
    picks: list[Pick] = []
    while len(picks) < k and available.any():
        if diversity == 0.0:
            gain = relevance
        else:
            gain = (1.0 - diversity) * relevance - diversity * redundancy
        # argmax over the available ones, first index on ties (stable with the ranker's order)
        best = int(np.flatnonzero(available)[np.argmax(gain[available])])
        available[best] = False
        if capped:
            category = categories[best]  # type: ignore[index]
            if category is not None:
                if counts.get(category, 0) >= max_per_category:  # type: ignore[operator]
                    continue
                counts[category] = counts.get(category, 0) + 1
        picks.append(Pick(best, float(redundancy[best]) if picks or above else 0.0))
        if diversity > 0.0:
            np.maximum(redundancy, vectors @ vectors[best], out=redundancy)
    return picks


def diversified(
    request: SearchRequest,
    stage: Stage,
    ranked: Ranked,
    need: int,
    order: list[int] | None = None,
    picked: np.ndarray | None = None,
    counts: dict[str, int] | None = None,
) -> list[tuple[int, float]]:
    """The diversify stage: (index into ranked.candidates, redundancy) for the first `need`
    of the rules' order, by MMR and the category cap when the request asks for them.

    order: the candidates to pick among (default the rules' order); picked and counts: what
    earlier tiers placed above them (see diversify)."""
    order = ranked.applied.order if order is None else order
    if request.diversity <= 0 and request.max_per_category is None:
        return [(j, 0.0) for j in order[:need]]
    if stage.vectors is None:
        raise ValueError("a diversified search needs the candidates' vectors")
    vectors = stage.vectors[[ranked.rows[j] for j in order]]
    picks = diversify(
        ranked.probabilities[order],
        vectors,
        need,
        diversity=request.diversity,
        categories=[ranked.candidates[j].item.category for j in order],
        max_per_category=request.max_per_category,
        picked=picked,
        counts=counts,
    )
    return [(order[p.index], p.redundancy) for p in picks]
