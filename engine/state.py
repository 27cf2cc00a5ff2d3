"""What the first stage reads about users and items, as of a moment.

Serving reads it from SQL as of now (SqlState). Training replays the event log and reads an
in-memory state as of just before each event (ReplayState), through the same first stage
and the same feature code, so an example never sees its own future.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    Integer,
    String,
    any_,
    bindparam,
    exists,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from engine import covisit
from engine.config import Settings
from engine.decay import rebase
from engine.events import EventIn
from engine.models import Covisit, Item, ItemStats, UserFeatures
from engine.users import UserState, event_weight, most_popular

# A decayed sum as stored: (value, as of when); engine.decay.as_of reads it at a moment.
Stored = tuple[float, datetime | None]
_NONE: Stored = (0.0, None)


class StateView(Protocol):
    now: datetime

    def user(self, user_id: str) -> UserState | None: ...

    def live_items(self, item_ids: Sequence[str]) -> dict[str, Stored]:
        """The given items that exist, each with its popularity as stored (decay.as_of reads
        it at any moment)."""
        ...

    def most_popular(self, limit: int, exclude: set[str], category: str | None) -> list[str]: ...

    def covisited(
        self, item_ids: list[str], limit: int, exclude: set[str]
    ) -> list[tuple[str, float]]: ...


class SqlState:
    """The live state in SQL, as of the request (or of an earlier moment, for evaluation).

    A search reads it with at most three statements: the user's row, the co-visits of the
    user's latest items, and which candidates still exist with their popularity (all of them
    at once). Each sees every committed write, so the next search reflects the last event.
    """

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now
        self._sql = _statements(session)

    def user(self, user_id: str) -> UserState | None:
        row = self.session.execute(self._sql.user, {"user_id": user_id}).first()
        return None if row is None else UserState.from_row(row)

    def live_items(self, item_ids: Sequence[str]) -> dict[str, Stored]:
        if not item_ids:
            return {}
        stored: dict[str, Stored] = {}
        missing: set[str] = set()
        rows = self.session.execute(self._sql.live_items, {"ids": self._sql.ids(item_ids)})
        for kind, item_id, popularity, ref in rows.all():
            if kind == 0:
                missing.add(item_id)
            else:
                stored[item_id] = (popularity or 0.0, ref)
        return {i: stored.get(i, _NONE) for i in item_ids if i not in missing}

    def most_popular(self, limit: int, exclude: set[str], category: str | None) -> list[str]:
        return most_popular(self.session, limit, exclude, category)

    def covisited(
        self, item_ids: list[str], limit: int, exclude: set[str]
    ) -> list[tuple[str, float]]:
        """Items most co-visited with the given ones, with their summed weight, best first."""
        if not item_ids or limit <= 0:
            return []
        rows = self.session.execute(
            self._sql.covisited,
            {"ids": self._sql.ids(item_ids), "n": limit + len(exclude) + len(item_ids)},
        )
        skip = exclude | set(item_ids)
        return [(b, float(w)) for b, w in rows.all() if b not in skip][:limit]


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
        value, ref = self._popularity.get(event.item_id, (0.0, None))
        new_ref, kept, age_factor = rebase(ref, event.ts, self._half_life_s)
        value = value * kept + max(weight, 0.0) * age_factor
        self._popularity[event.item_id] = (value, new_ref)

    def user(self, user_id: str) -> UserState | None:
        return self.users.get(user_id)

    def live_items(self, item_ids: Sequence[str]) -> dict[str, Stored]:
        # Exists: in the catalog as read when the replay started.
        return {i: self._popularity.get(i, _NONE) for i in item_ids if i in self.items}

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


@dataclass(frozen=True)
class _Statements:
    """SqlState's statements for one dialect, built once: each compiles once and is cached.

    A list of ids goes in as one parameter, read as a table (SQLite's json_each over a JSON
    array, PostgreSQL's unnest over an array), not as an expanding IN, which SQLAlchemy
    renders again on every call.
    """

    user: Any
    live_items: Any
    covisited: Any
    ids: Callable[[Sequence[str]], Any]


_STATEMENTS: dict[str, _Statements] = {}


def _statements(session: Session) -> _Statements:
    dialect = session.get_bind().dialect.name
    found = _STATEMENTS.get(dialect)
    if found is not None:
        return found
    ids: Callable[[Sequence[str]], Any]
    among: Callable[[Any], Any]  # column → "column is one of the ids", using its index
    if dialect == "postgresql":
        param = bindparam("ids", type_=postgresql.ARRAY(String))
        listed = func.unnest(param).table_valued("value").render_derived()
        ids = list

        def among(column: Any) -> Any:
            return column == any_(param)  # IN (SELECT unnest) makes it hash a whole table
    else:
        listed = func.json_each(bindparam("ids", type_=String)).table_valued("value")

        def ids(item_ids: Sequence[str]) -> str:
            return json.dumps(list(item_ids))

        def among(column: Any) -> Any:
            return column.in_(select(listed.c.value))

    total = func.sum(Covisit.weight).label("total")
    found = _STATEMENTS[dialect] = _Statements(
        user=select(UserFeatures.__table__).where(UserFeatures.user_id == bindparam("user_id")),
        # Rows (1, id, popularity, ref_ts) from item_stats, and (0, id, None, None) for each id
        # not in items: primary-key lookups that return only what is needed (nearly always no
        # missing ids). The result takes the first select's column types (DateTime).
        live_items=union_all(
            select(literal(1), ItemStats.item_id, ItemStats.popularity, ItemStats.ref_ts).where(
                among(ItemStats.item_id)
            ),
            select(literal(0), listed.c.value, null(), null()).where(
                ~exists().where(Item.id == listed.c.value)
            ),
        ),
        covisited=select(Covisit.item_b, total)
        .where(among(Covisit.item_a))
        .group_by(Covisit.item_b)
        .order_by(total.desc(), Covisit.item_b)
        .limit(bindparam("n", type_=Integer)),
        ids=ids,
    )
    return found
