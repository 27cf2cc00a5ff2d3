"""The page stage: pins placed, the requested page cut out of the final order, and each hit
with its score and, when asked, the explanation of it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.index.corpus import Corpus
from engine.ranking.rules import place_pins
from engine.search.candidates import Candidate
from engine.search.deep import Placed, Walk
from engine.search.highlight import Highlighter
from engine.search.request import SearchRequest
from engine.search.response import Explanation, SearchHit
from engine.store.models import Item


@dataclass
class Page:
    hits: list[SearchHit]
    shown: list[Placed]  # the results on the page, in order (their features: impressions)
    next_offset: int | None  # None at the end


def page(request: SearchRequest, walk: Walk) -> Page:
    """offset..offset+k of the search's order with the pinned items at their positions; the
    walk holds one more than the page, which says whether a next page exists."""
    final = place_pins(walk.placed, walk.pins)
    end = request.offset + request.k
    chosen = final[request.offset : end]
    hits = []
    for p in chosen:
        explanation = _explain(request, p) if request.explain else None
        hit = _hit(p.ranked.candidates[p.j], p.probability, explanation)
        hits.append(hit.only(request.fields))
    return Page(hits, chosen, end if len(final) > end else None)


def _explain(request: SearchRequest, p: Placed) -> Explanation:
    """The ranker's contributions, then what the rules and diversity did to the candidate."""
    explanation: dict[str, Any] = p.ranked.ranker.explain(p.features)
    applied = p.ranked.applied
    if p.j in applied.effects:
        explanation["rules"] = applied.effects[p.j]
        explanation["adjusted_logit"] = float(applied.logits[p.j])
    if request.diversity > 0 and p.redundancy is not None:  # a pick, not a pin
        explanation["diversity"] = {"redundancy": p.redundancy}
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


def with_text(
    session: Session,
    request: SearchRequest,
    corpus: Corpus,
    hits: list[SearchHit],
    highlighter: Highlighter,
) -> None:
    """The items' text (fields=["text"]) and highlights (highlight=true) on the page's hits:
    one read of the page's texts, only when asked for."""
    wants_text = request.fields is not None and "text" in request.fields
    if not hits or not (request.highlight or wants_text):
        return
    ids = [h.id for h in hits]
    texts = {i: t for i, t in session.execute(select(Item.id, Item.text).where(Item.id.in_(ids)))}
    terms: Collection[str] = ()
    if request.q:
        lexical = corpus.artifact.lexical
        if lexical is not None:  # the lexical stage's own terms, its typo fixes included
            beside = corpus.delta_lexical()
            terms = lexical.query_terms(request.q, request.typo_tolerance, beside)
        else:
            terms = highlighter.terms(request.q)
    for h in hits:
        text = texts.get(h.id)
        if wants_text:
            h.text = text or ""
        if request.highlight:
            h.highlights = highlighter.highlight(
                terms,
                h.title,
                text,
                pre=request.highlight_pre_tag,
                post=request.highlight_post_tag,
                crop_words=request.crop_length,
            )
