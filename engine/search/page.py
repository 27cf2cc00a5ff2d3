"""The page stage: pins placed, the requested page cut out of the final order, and each hit
with its score and, when asked, the explanation of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.ranking.rules import place_pins
from engine.search.candidates import Candidate
from engine.search.rank import Pick, Ranked
from engine.search.request import SearchRequest
from engine.search.response import Explanation, SearchHit
from engine.search.stage import Stage


@dataclass
class Page:
    hits: list[SearchHit]
    rows: list[int]  # the stage rows shown, in order (their features go to the impressions)
    next_offset: int | None  # None at the end


def page(request: SearchRequest, stage: Stage, ranked: Ranked, picks: list[Pick]) -> Page:
    """offset..offset+k of the picks with the pinned items at their positions; picks hold one
    more than the page, which says whether a next page exists."""
    final = place_pins([j for j, _ in picks], ranked.applied.pins)
    redundancy = dict(picks)
    end = request.offset + request.k
    chosen = final[request.offset : end]
    hits = []
    for j in chosen:
        explanation = _explain(request, stage, ranked, j, redundancy) if request.explain else None
        hits.append(_hit(ranked.candidates[j], float(ranked.probabilities[j]), explanation))
    return Page(hits, [ranked.rows[j] for j in chosen], end if len(final) > end else None)


def _explain(
    request: SearchRequest, stage: Stage, ranked: Ranked, j: int, redundancy: dict[int, float]
) -> Explanation:
    """The ranker's contributions, then what the rules and diversity did to the candidate."""
    explanation: dict[str, Any] = ranked.ranker.explain(stage.x[ranked.rows[j]])
    applied = ranked.applied
    if j in applied.effects:
        explanation["rules"] = applied.effects[j]
        explanation["adjusted_logit"] = float(applied.logits[j])
    if request.diversity > 0 and j in redundancy:
        explanation["diversity"] = {"redundancy": redundancy[j]}
    return Explanation(**explanation)


def _hit(c: Candidate, probability: float, explanation: Explanation | None) -> SearchHit:
    return SearchHit(
        id=c.item_id,
        title=c.item.title,
        category=c.item.category,
        score=round(probability, 6),
        tags=list(c.item.tags),
        attributes=dict(c.item.attributes),
        explanation=explanation,
    )
