"""What the encoder is tuned on (indexer.encoder_tuning): (anchor, positive, hard negative)
pairs from judgments, from the serve-time log and from the event history.

Positives:
- judgments: (query, item) with grade > 0;
- the serve-time log: a search's text and a result an event naming its request_id engaged
  with (impressions.query);
- the event history, for recommendation: two items one user engaged with (click, cart,
  purchase, a good rating) one after the other within a session's gap, the earlier as anchor.
Each query pair gets one hard negative, mined by the engine's own first stage: a candidate it
ranks high for the query (dense, past the top few, which may be unjudged answers) that is not a
positive of that query.

With windows, a long item (engine.encoder.chunking) stands in a query's pair as the window of
it the query is nearest, the one that scores it at serve time (MaxP): tuned on its truncated
text alone, the encoder learns from a part that may not hold the answer, and never from the
windows it is served by.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from engine.catalog.items import embedding_text, text_hash
from engine.encoder.chunking import ChunkSpec
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from engine.store.models import Event, Impression, Item
from engine.users.events import EventIn
from indexer.examples import POSITIVE_TYPES, Judgment, is_positive
from indexer.progress import Progress, no_progress

# Hard negatives: the first stage's dense candidates that are not answers, ranks
# [NEGATIVE_FROM, NEGATIVE_TO) of them. The very top is often a relevant item nobody judged
# (BM25's top more so: negatives from the fused order tuned SciFact to 0.677, these to 0.69).
NEGATIVE_FROM, NEGATIVE_TO = 3, 20
SESSION_GAP_S = 30 * 60  # two engagements further apart than this are not one visit


@dataclass(frozen=True)
class Pair:
    anchor: str  # a query, or the text of an item engaged with first
    positive: str  # the text of the item that answers it (or of its best window)
    negative: str | None = None  # a hard negative's text
    item_anchor: bool = False  # the anchor is an item's text (gets the document prompt)


def item_texts(session: Session, ids: Iterable[str]) -> dict[str, str]:
    """id → what the encoder reads for the item, for the ids that exist."""
    wanted = list(dict.fromkeys(ids))
    out: dict[str, str] = {}
    for start in range(0, len(wanted), 500):
        rows = session.execute(
            select(Item.id, Item.title, Item.text, Item.category, Item.tags).where(
                Item.id.in_(wanted[start : start + 500])
            )
        )
        for row in rows:
            out[row.id] = embedding_text(row.title, row.text, row.category, row.tags or [])
    return out


def judgment_pairs(
    runtime: Runtime,
    session: Session,
    judgments: Sequence[Judgment],
    *,
    seed: int = 0,
    windows: bool = False,
    progress: Progress = no_progress,
) -> list[Pair]:
    """One pair per judged positive, with a hard negative from the engine's first stage;
    with windows, each long item's text is its window nearest the query (best_windows)."""
    by_query: dict[str, dict[str, float]] = {}
    for j in judgments:
        if j.grade > 0:
            by_query.setdefault(j.query, {})[j.item_id] = j.grade
    texts = item_texts(session, (i for docs in by_query.values() for i in docs))
    rng = random.Random(seed)
    searcher = runtime.searcher
    pairs: list[Pair] = []
    for n, (query, docs) in enumerate(by_query.items()):
        stage = searcher.first_stage(session, SearchRequest(q=query, k=NEGATIVE_TO + len(docs)))
        dense = sorted((c for c in stage.candidates if c.ann_rank is not None), key=_ann_rank)
        pool = [c.item_id for c in dense if c.item_id not in docs][NEGATIVE_FROM:NEGATIVE_TO]
        negatives = item_texts(session, pool)
        found: list[tuple[str, str | None]] = []
        for item_id in docs:
            if item_id not in texts:
                continue  # judged but not in the catalog
            found.append((item_id, rng.choice(pool) if pool else None))
        chosen = {i: texts[i] for i, _ in found}
        chosen.update((i, negatives[i]) for _, i in found if i is not None and i in negatives)
        if windows:
            chosen = best_windows(runtime, query, chosen)
        for item_id, negative in found:
            hard = chosen.get(negative) if negative is not None else None
            pairs.append(Pair(query, chosen[item_id], hard))
        progress("negatives", n + 1, len(by_query))
    return pairs


def _ann_rank(candidate: Any) -> int:
    return int(candidate.ann_rank or 0)


def best_windows(runtime: Runtime, query: str, texts: Mapping[str, str]) -> dict[str, str]:
    """id → the window of the item's text (its whole text, as the encoder truncates it, or one
    of the chunker's windows after it) nearest the query under the live index's encoder. The
    index's vectors are used where they are the text's; others are encoded here."""
    artifact = runtime.searcher.artifact()
    embedder = runtime.embedder_for(artifact.model_name)
    chunker = embedder.chunker(runtime.settings)
    if chunker is None:
        return dict(texts)
    chunks = artifact.chunks
    same_cut = chunks is not None and ChunkSpec.from_dict(artifact.manifest.get("chunks")) == (
        chunker.spec
    )
    query_vector = embedder.encode_query(query)  # (dim,) unit
    out: dict[str, str] = {}
    for item_id, text in texts.items():
        cut = [text, *chunker.extra(text)]
        if len(cut) == 1:
            out[item_id] = text
            continue
        row = artifact.row_of(item_id)
        vectors: np.ndarray | None = None  # (len(cut), dim) unit
        if (
            same_cut
            and chunks is not None
            and row is not None
            and artifact.text_hashes[row] == text_hash(artifact.model_name, text)
            and int(chunks.starts[row + 1] - chunks.starts[row]) == len(cut) - 1
        ):
            rest = np.asarray(chunks.vectors[chunks.starts[row] : chunks.starts[row + 1]])
            vectors = np.vstack([np.asarray(artifact.vectors())[row][None, :], rest])
        if vectors is None:  # not in the index as it is now: a new or changed item
            vectors = embedder.encode(cut)
        out[item_id] = cut[int(np.argmax(vectors @ query_vector))]
    return out


def clicked_judgments(session: Session, positive_rating: float) -> list[Judgment]:
    """(query, item) from the serve-time log: a search's text and a result of it that an
    event naming the search's request_id engaged with (click, cart, purchase, good rating)."""
    engaged = or_(
        Event.type.in_(POSITIVE_TYPES),
        (Event.type == "rating") & (Event.value >= positive_rating),
    )
    rows = session.execute(
        select(Impression.query, Impression.item_id)
        .join(
            Event,
            (Event.request_id == Impression.request_id) & (Event.item_id == Impression.item_id),
        )
        .where(Impression.query.is_not(None), engaged)
        .distinct()
        .order_by(Impression.query, Impression.item_id)
    )
    return [Judgment(str(query), str(item_id), 1.0) for query, item_id in rows]


def event_pairs(
    session: Session,
    events: Sequence[EventIn],
    positive_rating: float,
    *,
    gap_s: float = SESSION_GAP_S,
) -> list[Pair]:
    """Consecutive engagements of one user within gap_s: (earlier item, later item).

    `events` is the history to learn from, oldest first: pass only the training prefix when
    later events are held out.
    """
    last: dict[str, tuple[str, float]] = {}
    found: list[tuple[str, str]] = []
    for event in events:
        if event.item_id is None or not is_positive(event, positive_rating):
            continue
        ts = event.ts.timestamp() if event.ts is not None else 0.0
        before = last.get(event.user_id)
        if before is not None and before[0] != event.item_id and ts - before[1] <= gap_s:
            found.append((before[0], event.item_id))
        last[event.user_id] = (event.item_id, ts)
    texts = item_texts(session, (i for pair in found for i in pair))
    seen: set[tuple[str, str]] = set()
    pairs = []
    for a, b in found:
        if a in texts and b in texts and (a, b) not in seen:
            seen.add((a, b))
            pairs.append(Pair(texts[a], texts[b], item_anchor=True))
    return pairs
