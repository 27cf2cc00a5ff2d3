"""Co-visitation: items that the same users touch close together, counted incrementally.

Each event with positive weight pairs its item with the user's few most recent other items
(both directions, +1 each). A user with history then gets candidates that co-occur with what
they just did, which embeddings of titles cannot see (read by engine.users.state).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from sqlalchemy.orm import Session

from engine.store import sql_bulk
from engine.store.models import Covisit
from engine.users.events import EventIn


def partners(recent: Sequence[Sequence[str]], event: EventIn, window: int) -> list[str]:
    """The user's most recent other items at or before the event's time (at most window).

    recent: the user's [item_id, type, iso_ts] entries, newest first (UserState.recent).
    """
    stamp = event.ts.isoformat()
    out: list[str] = []
    for item_id, _type, ts in recent:
        if ts <= stamp and item_id != event.item_id and item_id not in out:
            out.append(item_id)
            if len(out) == window:
                break
    return out


def add_pairs(counts: Counter[tuple[str, str]], item_id: str, others: Iterable[str]) -> None:
    for other in others:
        counts[(item_id, other)] += 1
        counts[(other, item_id)] += 1


def write_pairs(session: Session, counts: Counter[tuple[str, str]]) -> None:
    """Add the counts to the stored weights atomically: one upsert statement for the batch
    (engine.store.sql_bulk), pairs in key order so concurrent batches cannot deadlock."""
    rows = [{"item_a": a, "item_b": b, "weight": w} for (a, b), w in sorted(counts.items())]
    sql_bulk.add_to(session, Covisit, ["item_a", "item_b"], "weight", rows)
