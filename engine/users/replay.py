"""The state training reads: the event log replayed in memory, as of just before each event,
through the same first stage and feature code as serving (engine.users.state's
StateView)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime

from engine.catalog.item_watch import Stored
from engine.core.config import Settings
from engine.users import covisit
from engine.users.decay import rebase
from engine.users.events import EventIn
from engine.users.profile import UserState, event_weight
from engine.users.state import _NONE, latest_items


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
        self._popularity: dict[str, Stored] = {}
        self._covisits: dict[str, Counter[str]] = defaultdict(Counter)
        self._weights = settings.type_weights()
        self._half_life_s = settings.half_life_s

    def apply(self, event: EventIn) -> None:
        """Fold one event in, exactly as record_events does for the stored state."""
        weight = event_weight(event, self.settings, self._weights)
        state = self.users.setdefault(event.user_id, UserState(event.user_id))
        if weight > 0 and self.settings.covisit_window > 0:
            pairs: Counter[tuple[str, str]] = Counter()
            others = covisit.partners(state.recent, event, self.settings.covisit_window)
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
        value, ref, events = self._popularity.get(event.item_id, _NONE)
        new_ref, kept, age_factor = rebase(ref, event.ts, self._half_life_s)
        value = value * kept + max(weight, 0.0) * age_factor
        self._popularity[event.item_id] = (value, new_ref, events + 1)

    def user(self, user_id: str) -> UserState | None:
        return self.users.get(user_id)

    def user_with_covisits(
        self, user_id: str, window: int, limit: int
    ) -> tuple[UserState | None, list[tuple[str, float]]]:
        user = self.users.get(user_id)
        if user is None or window <= 0 or limit <= 0:
            return user, []
        latest = latest_items(user, window)
        return user, self.covisited(latest, limit + len(user.recent) + len(user.purchased), set())

    def live_items(self, item_ids: Sequence[str]) -> dict[str, Stored]:
        # Exists: in the catalog as read when the replay started.
        return {i: self._popularity.get(i, _NONE) for i in item_ids if i in self.items}

    def most_popular(self, limit: int, exclude: set[str], category: str | None) -> list[str]:
        ranked = sorted(self._popularity.items(), key=lambda kv: (-kv[1][0], kv[0]))
        out = []
        for item_id, (value, _, _) in ranked:
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
