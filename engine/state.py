"""What the first stage reads about users and items, as of a moment.

Serving reads it from SQL as of now (SqlState). Training replays the event log and reads an
in-memory state as of just before each event (ReplayState), through the same first stage
and the same feature code, so an example never sees its own future.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session

from engine import covisit
from engine.config import Settings
from engine.events import EventIn
from engine.users import UserState, decay, event_weight, load_user, most_popular


class StateView(Protocol):
    now: datetime

    def user(self, user_id: str) -> UserState | None: ...

    def popularity(self, item_ids: list[str]) -> dict[str, float] | None:
        """Decayed popularity as of now; None means "as stored with the items" (SQL)."""

    def most_popular(self, limit: int, exclude: set[str], category: str | None) -> list[str]: ...

    def covisited(
        self, item_ids: list[str], limit: int, exclude: set[str]
    ) -> list[tuple[str, float]]: ...


class SqlState:
    """The live state in SQL, as of the request."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now

    def user(self, user_id: str) -> UserState | None:
        return load_user(self.session, user_id)

    def popularity(self, item_ids: list[str]) -> dict[str, float] | None:
        return None  # joined into the candidate query, decayed there

    def most_popular(self, limit: int, exclude: set[str], category: str | None) -> list[str]:
        return most_popular(self.session, limit, exclude, category)

    def covisited(
        self, item_ids: list[str], limit: int, exclude: set[str]
    ) -> list[tuple[str, float]]:
        return covisit.covisited(self.session, item_ids, limit, exclude)


class ReplayState:
    """Users, popularity and co-visitation rebuilt in memory by applying events in time order
    with the same update rules as record_events."""

    def __init__(
        self,
        settings: Settings,
        item_meta: dict[str, tuple[str | None, list[str]]],
        vector_of: dict[str, object],
    ) -> None:
        self.settings = settings
        self.items = item_meta
        self.vectors = vector_of
        self.now = datetime.min
        self.users: dict[str, UserState] = {}
        self._popularity: dict[str, tuple[float, datetime]] = {}
        self._covisits: dict[str, Counter[str]] = defaultdict(Counter)
        self._weights = settings.type_weights()
        self._half_life_s = settings.half_life_days * 86_400.0

    def apply(self, event: EventIn) -> None:
        """Fold one event in, exactly as record_events does for the stored state."""
        weight = event_weight(event, self.settings, self._weights)
        state = self.users.setdefault(event.user_id, UserState(event.user_id))
        if weight > 0 and self.settings.covisit_window > 0:
            pairs: Counter[tuple[str, str]] = Counter()
            others = covisit.partners(state, event, self.settings.covisit_window)
            covisit.add_pairs(pairs, event.item_id, others)
            for (a, b), n in pairs.items():
                self._covisits[a][b] += n
        category, tags = self.items.get(event.item_id, (None, []))
        vector = self.vectors.get(event.item_id) if weight != 0 else None
        state.apply(
            event,
            weight,
            category,
            tags,
            vector,  # type: ignore[arg-type]
            self._half_life_s,
            self.settings.recent_items,
        )
        value, ref = self._popularity.get(event.item_id, (0.0, event.ts))
        if event.ts > ref:
            value *= decay((event.ts - ref).total_seconds(), self._half_life_s)
            ref = event.ts
        value += max(weight, 0.0) * decay((ref - event.ts).total_seconds(), self._half_life_s)
        self._popularity[event.item_id] = (value, ref)

    def user(self, user_id: str) -> UserState | None:
        return self.users.get(user_id)

    def popularity(self, item_ids: list[str]) -> dict[str, float] | None:
        out = {}
        for item_id in item_ids:
            value, ref = self._popularity.get(item_id, (0.0, self.now))
            age = max(0.0, (self.now - ref).total_seconds())
            out[item_id] = value * decay(age, self._half_life_s)
        return out

    def most_popular(self, limit: int, exclude: set[str], category: str | None) -> list[str]:
        ranked = sorted(self._popularity.items(), key=lambda kv: (-kv[1][0], kv[0]))
        out = []
        for item_id, (value, _) in ranked:
            if value <= 0 or item_id in exclude:
                continue
            if category is not None and self.items.get(item_id, (None, []))[0] != category:
                continue
            out.append(item_id)
            if len(out) == limit:
                break
        return out

    def covisited(
        self, item_ids: list[str], limit: int, exclude: set[str]
    ) -> list[tuple[str, float]]:
        total: Counter[str] = Counter()
        for item_id in item_ids:
            total.update(self._covisits.get(item_id, {}))
        skip = exclude | set(item_ids)
        ranked = sorted(
            ((b, float(w)) for b, w in total.items() if b not in skip), key=lambda p: (-p[1], p[0])
        )
        return ranked[:limit]
