"""The one decay rule for user taste, affinities and item popularity.

Every decayed sum halves each half-life and is stored as of a reference time, the newest
event it has seen: an event at time t adds w·2^(-(ref - t)/half_life); an event newer than ref
first decays the stored sums to its own time. The sums therefore do not depend on the order
events arrive in, which is what lets concurrent writers, replays and out-of-order batches
agree exactly. Reading a sum at a later moment decays it to that moment.
"""

from __future__ import annotations

from datetime import datetime


def decay(seconds: float, half_life_s: float) -> float:
    """The factor a weight keeps after `seconds`: 1/2 per half-life."""
    return float(2.0 ** (-seconds / half_life_s))


def rebase(ref: datetime | None, ts: datetime, half_life_s: float) -> tuple[datetime, float, float]:
    """Fold an event at ts into sums stored as of ref.

    Returns (the new ref, the factor for the stored sums, the factor for the event's weight):
    an event newer than ref moves ref to it and decays what was stored; an older one is
    decayed to ref itself.
    """
    if ref is None:
        return ts, 1.0, 1.0
    if ts > ref:
        return ts, decay((ts - ref).total_seconds(), half_life_s), 1.0
    return ref, 1.0, decay((ref - ts).total_seconds(), half_life_s)


def as_of(value: float, ref: datetime | None, now: datetime, half_life_s: float) -> float:
    """A sum stored as of ref, decayed to now (a now before ref leaves it as stored)."""
    if not value or ref is None or now <= ref:
        return value
    return value * decay((now - ref).total_seconds(), half_life_s)
