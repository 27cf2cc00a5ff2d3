"""A user's features in memory (taste vector, affinities, recent items) and the reads of them:
one user's row, the profile the API shows, the most popular items.

Every decayed quantity follows engine.users.decay: kept as of the newest event seen, so the
state does not depend on the order events arrive in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.core.clock import iso_z, utcnow
from engine.core.config import Settings
from engine.core.errors import NotFound
from engine.store.models import Event, Item, ItemStats, UserFeatures
from engine.users.decay import as_of, rebase
from engine.users.events import EventIn
from engine.users.schemas import Affinity, EventOut, RecentItem, UserProfile

MAX_PURCHASED = 1_000


def event_weight(event: EventIn, settings: Settings, type_weights: dict[str, float]) -> float:
    """How much one event says about the user's taste; negative for a low rating."""
    if event.type == "rating":
        return ((event.value or settings.rating_neutral) - settings.rating_neutral) * (
            settings.rating_scale
        )
    return type_weights.get(event.type, 0.0)


@dataclass
class UserState:
    """A user's features in memory; loaded from and written back to one user_features row."""

    user_id: str
    event_count: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    first_ts: datetime | None = None
    last_ts: datetime | None = None
    ref_ts: datetime | None = None
    vector: np.ndarray | None = None  # (dim,) float64, decayed weighted sum
    vector_weight: float = 0.0
    # The encoder whose item vectors `vector` sums (engine.users.taste); None: unknown.
    encoder: str | None = None
    category_affinity: dict[str, float] = field(default_factory=dict)
    tag_affinity: dict[str, float] = field(default_factory=dict)
    recent: list[list[str]] = field(default_factory=list)
    purchased: list[str] = field(default_factory=list)

    @classmethod
    def from_row(cls, row: Any) -> UserState:
        """From a user_features row: the UserFeatures object or a row selected from its table."""
        vector = None
        if row.vector:
            vector = np.frombuffer(row.vector, dtype=np.float64).copy()
        return cls(
            user_id=row.user_id,
            event_count=row.event_count or 0,
            counts=dict(row.counts or {}),
            first_ts=row.first_ts,
            last_ts=row.last_ts,
            ref_ts=row.ref_ts,
            vector=vector,
            vector_weight=row.vector_weight or 0.0,
            encoder=getattr(row, "vector_encoder", None),  # a search's read leaves it out
            category_affinity=dict(row.category_affinity or {}),
            tag_affinity=dict(row.tag_affinity or {}),
            recent=[list(r) for r in row.recent or []],
            purchased=list(row.purchased or []),
        )

    def values(self, now: datetime) -> dict[str, Any]:
        """The user_features row's columns for this state, updated at now."""
        return {
            "user_id": self.user_id,
            "event_count": self.event_count,
            "counts": dict(self.counts),
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "ref_ts": self.ref_ts,
            "vector": None if self.vector is None else self.vector.astype(np.float64).tobytes(),
            "vector_weight": self.vector_weight,
            "vector_encoder": self.encoder,
            "category_affinity": dict(self.category_affinity),
            "tag_affinity": dict(self.tag_affinity),
            "recent": [list(r) for r in self.recent],
            "purchased": list(self.purchased),
            "updated_at": now,
        }

    def apply(
        self,
        event: EventIn,
        weight: float,
        category: str | None,
        tags: Sequence[str],
        item_vector: np.ndarray | None,
        half_life_s: float,
        recent_max: int,
    ) -> None:
        """Fold one event into the state (order-independent: engine.users.decay's rule)."""
        t = event.ts
        moved = self.ref_ts is not None and t > self.ref_ts
        self.ref_ts, f, age_factor = rebase(self.ref_ts, t, half_life_s)
        if moved:
            if self.vector is not None:
                self.vector *= f
            self.vector_weight *= f
            self.category_affinity = {k: v * f for k, v in self.category_affinity.items()}
            self.tag_affinity = {k: v * f for k, v in self.tag_affinity.items()}
        w = weight * age_factor
        if w != 0.0:
            if item_vector is not None:
                if self.vector is None or self.vector.shape != item_vector.shape:
                    self.vector = np.zeros(item_vector.shape, dtype=np.float64)
                self.vector += w * item_vector.astype(np.float64)
                self.vector_weight += abs(w)
            if category:
                self.category_affinity[category] = self.category_affinity.get(category, 0.0) + w
            for tag in tags:
                self.tag_affinity[tag] = self.tag_affinity.get(tag, 0.0) + w
        self.event_count += 1
        self.counts[event.type] = self.counts.get(event.type, 0) + 1
        self.first_ts = t if self.first_ts is None else min(self.first_ts, t)
        self.last_ts = t if self.last_ts is None else max(self.last_ts, t)
        if event.type != "impression":
            entry = [event.item_id, event.type, t.isoformat()]
            self.recent.append(entry)
            self.recent.sort(key=lambda r: (r[2], r[1], r[0]), reverse=True)
            del self.recent[recent_max:]
        if event.type == "purchase" and event.item_id not in self.purchased:
            self.purchased.append(event.item_id)
            del self.purchased[:-MAX_PURCHASED]

    def unit_vector(self) -> np.ndarray | None:
        """The taste direction as a float32 unit vector, or None without (positive) history."""
        if self.vector is None:
            return None
        norm = float(np.linalg.norm(self.vector))
        if norm < 1e-9:
            return None
        return (self.vector / norm).astype(np.float32)

    def seen_items(self) -> set[str]:
        return {r[0] for r in self.recent} | set(self.purchased)

    def normalized_affinity(self, kind: str) -> dict[str, float]:
        """Affinities scaled into [-1, 1] by the largest magnitude (decay cancels out)."""
        values = self.category_affinity if kind == "category" else self.tag_affinity
        top = max((abs(v) for v in values.values()), default=0.0)
        if top <= 0:
            return {}
        return {k: v / top for k, v in values.items()}


def load_user(session: Session, user_id: str) -> UserState | None:
    """The user's features as stored (no lock), or None for a user with no events yet."""
    row = session.get(UserFeatures, user_id)
    return None if row is None else UserState.from_row(row)


def user_profile(session: Session, user_id: str, settings: Settings, top: int = 10) -> UserProfile:
    """What an operator needs to see why the user gets what they get; raises NotFound."""
    state = load_user(session, user_id)
    if state is None:
        raise NotFound(f"user {user_id!r} (no events recorded)")
    now = utcnow()
    f = as_of(1.0, state.ref_ts, now, settings.half_life_s)

    def ranked(values: dict[str, float]) -> list[Affinity]:
        best = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return [Affinity(name=k, affinity=round(v * f, 6)) for k, v in best]

    return UserProfile(
        user_id=state.user_id,
        event_count=state.event_count,
        counts=state.counts,
        first_activity=iso_z(state.first_ts),
        last_activity=iso_z(state.last_ts),
        top_categories=ranked(state.category_affinity),
        top_tags=ranked(state.tag_affinity),
        recent_items=[RecentItem(item_id=i, type=t, ts=ts + "Z") for i, t, ts in state.recent],
        purchased=state.purchased[-top:][::-1],
        has_vector=state.unit_vector() is not None,
        decayed_to=iso_z(now),
        half_life_days=settings.half_life_days,
    )


def most_popular(
    session: Session, limit: int, exclude: set[str], category: str | None
) -> list[str]:
    """Item ids by stored popularity (each as of its own last event; good enough to rank)."""
    query = (
        select(ItemStats.item_id)
        .join(Item, Item.id == ItemStats.item_id)
        .where(ItemStats.popularity > 0)
        .order_by(ItemStats.popularity.desc(), ItemStats.item_id)
        .limit(limit + len(exclude))
    )
    if category is not None:
        query = query.where(Item.category == category)
    return [i for i in session.scalars(query) if i not in exclude][:limit]


def recent_events(session: Session, user_id: str, limit: int = 20) -> list[EventOut]:
    """The user's latest events, newest first (the admin page's user inspector)."""
    rows = session.scalars(
        select(Event)
        .where(Event.user_id == user_id)
        .order_by(Event.ts.desc(), Event.id.desc())
        .limit(limit)
    )
    return [
        EventOut(
            type=e.type, item_id=e.item_id, ts=iso_z(e.ts), value=e.value, request_id=e.request_id
        )
        for e in rows
    ]
