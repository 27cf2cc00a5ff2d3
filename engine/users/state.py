"""What the first stage reads about users and items, as of a moment.

Serving reads it from SQL as of now (SqlState). Training replays the event log and reads an
in-memory state as of just before each event (ReplayState), through the same first stage
and the same feature code, so an example never sees its own future."""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    DateTime,
    Engine,
    String,
    any_,
    bindparam,
    column,
    exists,
    func,
    literal,
    null,
    select,
    text,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from engine.catalog.item_watch import ItemWatch, Stored, event_total
from engine.store.db import DriverStatement
from engine.store.models import Covisit, Item, ItemStats, ItemTombstone, UserFeatures
from engine.users.profile import UserState, most_popular

_NONE: Stored = (0.0, None, 0)


class StateView(Protocol):
    now: datetime

    def user_with_covisits(
        self, user_id: str, window: int, limit: int
    ) -> tuple[UserState | None, list[tuple[str, float]]]:
        """The user (None without events) and the items most co-visited with the user's latest
        `window` distinct items, with their summed weight, best first: enough of them that
        `limit` remain once those items and everything the user has seen are left out."""
        ...

    def live_items(self, item_ids: Sequence[str]) -> dict[str, Stored]:
        """The given items that exist, each with its popularity as stored (decay.as_of reads
        it at any moment) and its event count in all."""
        ...

    def most_popular(self, limit: int, exclude: set[str], category: str | None) -> list[str]: ...

    def covisited(
        self, item_ids: list[str], limit: int, exclude: set[str]
    ) -> list[tuple[str, float]]:
        """Items co-visited with the given ones (similar items), best first."""
        ...


class SqlState:
    """The live state in SQL, as of the request (or of an earlier moment, for evaluation).

    With a watch (serving), a search reads it with one statement: the user's row with the
    co-visits of the user's latest items and the tombstones written since the watch last
    looked (an anonymous search reads only those); popularity and older deletions come from
    the process's ItemWatch. The statement sees every committed write, so the next search
    reflects the last event and the last deletion. Ids that neither the serving version nor
    its delta holds (`unknown` finds them) are still checked in SQL. Without a watch
    (evaluation, tools), every candidate is looked up.
    """

    def __init__(
        self,
        session: Session,
        now: datetime,
        watch: ItemWatch | None = None,
        unknown: Callable[[Sequence[str]], list[str]] | None = None,
    ) -> None:
        self.session = session
        self.now = now
        self.watch = watch if watch is not None and watch.ready() else None
        self.unknown = unknown
        self._sql = _statements(session)
        self._engine: Engine = session.get_bind()  # type: ignore[assignment]
        self._gone: set[str] | None = None  # tombstones since the watch's horizon, read once

    def user(self, user_id: str) -> UserState | None:
        return self.user_with_covisits(user_id, 0, 0)[0]

    def _driver_reads(self) -> bool:
        """Whether a read may go through its DriverStatement, on a connection of its own from
        the session's pool: while the session has begun nothing, a fresh connection sees
        what the session's first statement would (no writes of its own, no snapshot yet).
        A search's session is in that state for its one or two reads, nearly always."""
        return not self.session.in_transaction()

    def user_with_covisits(
        self, user_id: str, window: int, limit: int
    ) -> tuple[UserState | None, list[tuple[str, float]]]:
        # The same statement reads the deletions since the watch's horizon, which live_items
        # would read next: a search with a user makes one round trip, not two.
        since = self.watch.horizon if self.watch is not None and self._gone is None else None
        params = {
            "user_id": user_id,
            "window": max(window, 0),
            "limit": max(limit, 0),
            "since": since,
        }
        row: Any
        if self._driver_reads():
            row = _UserRow._make(self._sql.user_with_covisits_driver.rows(self._engine, params)[0])
        else:
            row = self.session.execute(self._sql.user_with_covisits, params).one()
        if since is not None:
            self._gone = set(row.gone or ())
        if row.user_id is None:
            return None, []
        ranked = sorted(row.covisits or [])  # by rank: an aggregate's input order is not promised
        return UserState.from_row(row), [(item_id, float(total)) for _, item_id, total in ranked]

    def live_items(self, item_ids: Sequence[str]) -> dict[str, Stored]:
        if not item_ids:
            return {}
        watch = self.watch
        if watch is None:
            return self._read_live(item_ids)
        gone, deleted, popularity = self._since_horizon(watch), watch.deleted, watch.popularity
        get = popularity.get
        if gone or deleted:
            out = {i: get(i, _NONE) for i in item_ids if i not in gone and i not in deleted}
        else:  # nearly always: nothing deleted since the version was built
            out = {i: get(i, _NONE) for i in item_ids}
        unknown = self.unknown(list(out)) if self.unknown is not None else []
        if unknown:  # not in the version or its delta (rare): SQL says whether they exist
            for item_id in unknown:
                del out[item_id]
            out.update(self._read_live(unknown))
        return out

    def _since_horizon(self, watch: ItemWatch) -> set[str]:
        """The tombstones written since the watch's horizon (read once per state)."""
        if self._gone is None:
            assert watch.horizon is not None
            params = {"since": watch.horizon}
            if self._driver_reads():
                rows = self._sql.deleted_since_driver.rows(self._engine, params)
                self._gone = {item_id for (item_id,) in rows}
            else:
                self._gone = set(self.session.scalars(self._sql.deleted_since, params))
        return self._gone

    def deleted(self) -> list[Collection[str]]:
        """The ids of deleted items, as sets to check in turn: the watch's and those since its
        horizon, or without a watch every tombstone (one read). Tombstones older than every
        kept index version are pruned, so these cover every row a version still holds."""
        if self.watch is None:
            return [set(self.session.scalars(select(ItemTombstone.item_id)))]
        return [self.watch.deleted, self._since_horizon(self.watch)]

    def _read_live(self, item_ids: Sequence[str]) -> dict[str, Stored]:
        """The ids that exist in SQL with their stored popularity (one statement)."""
        ids = self._sql.ids(item_ids)
        found: dict[str, Stored] = dict.fromkeys(item_ids, _NONE)  # no item_stats row: 0
        for kind, item_id, popularity, ref, counts in self.session.execute(
            self._sql.live_items, {"ids": ids}
        ).all():
            if kind == 0:
                found.pop(item_id, None)
            else:
                found[item_id] = (popularity or 0.0, ref, event_total(counts))
        return found

    def most_popular(self, limit: int, exclude: set[str], category: str | None) -> list[str]:
        return most_popular(self.session, limit, exclude, category)

    def covisited(
        self, item_ids: list[str], limit: int, exclude: set[str]
    ) -> list[tuple[str, float]]:
        skip = exclude | set(item_ids)
        total = func.sum(Covisit.weight)
        rows = self.session.execute(
            select(Covisit.item_b, total)
            .where(Covisit.item_a.in_(item_ids))
            .group_by(Covisit.item_b)
            .order_by(total.desc(), Covisit.item_b)
            .limit(limit + len(skip))
        ).all()
        return [(b, float(w)) for b, w in rows if b not in skip][:limit]


def latest_items(user: UserState, window: int) -> list[str]:
    """The user's `window` latest distinct items, newest first (co-visitation starts there)."""
    return list(dict.fromkeys(r[0] for r in user.recent))[:window]


# The user's row with, in one more column, the co-visits of the user's latest `window`
# distinct items as a JSON array of [rank, item_b, total]: one round trip, one row. Enough
# co-visits come back for `limit` to remain after the caller drops the user's seen items
# (recent and purchased ids: at most their two list lengths). SQLite prints each total with
# 17 digits (its JSON would keep 15), so the float read back is the one summed.
_USER_WITH_COVISITS = """
WITH latest AS (
    SELECT {item_of_entry} AS item_id, min({position}) AS pos
    FROM user_features AS u, {entries}
    WHERE u.user_id = :user_id
    GROUP BY 1 ORDER BY 2 LIMIT :window
), pairs AS (
    SELECT c.item_b AS item_b, sum(c.weight) AS total
    FROM covisits AS c WHERE c.item_a IN (SELECT item_id FROM latest)
    GROUP BY c.item_b
), ranked AS (
    SELECT item_b, total, row_number() OVER (ORDER BY total DESC, item_b) AS n FROM pairs
)
SELECT u.user_id, u.event_count, u.counts, u.first_ts, u.last_ts, u.ref_ts, u.vector,
       u.vector_weight, u.category_affinity, u.tag_affinity, u.recent, u.purchased,
       (SELECT {aggregate} FROM ranked
        WHERE n <= :limit + json_array_length(u.recent) + json_array_length(u.purchased)
       ) AS covisits,
       (SELECT {ids_aggregate} FROM item_tombstones WHERE deleted_at >= :since) AS gone
FROM (SELECT 1 AS one) AS always LEFT JOIN user_features AS u ON u.user_id = :user_id
"""


_USER_COLUMNS = (
    "user_id",
    "event_count",
    "counts",
    "first_ts",
    "last_ts",
    "ref_ts",
    "vector",
    "vector_weight",
    "category_affinity",
    "tag_affinity",
    "recent",
    "purchased",
)


# The user's read as a row, when it comes from the driver (UserState.from_row reads it).
_UserRow = namedtuple("_UserRow", [*_USER_COLUMNS, "covisits", "gone"])  # type: ignore[misc]


@dataclass(frozen=True)
class _Statements:
    """SqlState's statements for one dialect, built once: each compiles once and is cached.

    A list of ids goes in as one parameter, read as a table (SQLite's json_each over a JSON
    array, PostgreSQL's unnest over an array), not as an expanding IN, which SQLAlchemy
    renders again on every call.
    """

    user_with_covisits: Any
    live_items: Any
    deleted_since: Any
    ids: Callable[[Sequence[str]], Any]
    # The two reads of a search, run on the driver's connection (engine.store.db.DriverStatement).
    user_with_covisits_driver: DriverStatement
    deleted_since_driver: DriverStatement


_STATEMENTS: dict[str, _Statements] = {}


def _statements(session: Session) -> _Statements:
    bind = session.get_bind()
    dialect = bind.dialect.name
    found = _STATEMENTS.get(dialect)
    if found is not None:
        return found
    ids: Callable[[Sequence[str]], Any]
    listed: Callable[[str], Any]  # parameter name → a table of its ids, column "value"
    among: Callable[[Any, str], Any]  # column → "column is one of the ids", using its index
    if dialect == "postgresql":
        ids = list
        entries = {
            "item_of_entry": "r.value ->> 0",
            "position": "r.pos",
            "entries": "json_array_elements(u.recent) WITH ORDINALITY AS r(value, pos)",
            "aggregate": "json_agg(json_build_array(n, item_b, total))",
            "ids_aggregate": "json_agg(item_id)",
        }

        def listed(name: str) -> Any:
            param = bindparam(name, type_=postgresql.ARRAY(String))
            return func.unnest(param).table_valued("value").render_derived()

        def among(column: Any, name: str) -> Any:
            # IN (SELECT unnest) makes PostgreSQL hash a whole table.
            return column == any_(bindparam(name, type_=postgresql.ARRAY(String)))
    else:
        entries = {
            "item_of_entry": "json_extract(r.value, '$[0]')",
            "position": "r.key",
            "entries": "json_each(u.recent) AS r",
            "aggregate": "json_group_array(json_array(n, item_b, printf('%.17g', total)))",
            "ids_aggregate": "json_group_array(item_id)",
        }

        def ids(item_ids: Sequence[str]) -> str:
            return json.dumps(list(item_ids))

        def listed(name: str) -> Any:
            return func.json_each(bindparam(name, type_=String)).table_valued("value")

        def among(column: Any, name: str) -> Any:
            return column.in_(select(listed(name).c.value))

    users = UserFeatures.__table__
    candidates = listed("ids")
    user_columns = [
        *(users.c[name] for name in _USER_COLUMNS),
        column("covisits", JSON),
        column("gone", JSON),
    ]
    user_with_covisits = (
        text(_USER_WITH_COVISITS.format(**entries))
        .bindparams(bindparam("since", type_=DateTime))
        .columns(*user_columns)
    )
    deleted_since = select(ItemTombstone.item_id).where(
        ItemTombstone.deleted_at >= bindparam("since", type_=DateTime)
    )
    found = _STATEMENTS[dialect] = _Statements(
        user_with_covisits=user_with_covisits,
        # Rows (1, id, popularity, ref_ts, counts) from item_stats for the ids, and
        # (0, id, None, None, None) for each id not in items (nearly always none):
        # primary-key lookups that return only what is needed. The result takes the first
        # select's column types (DateTime, JSON), so item_stats comes first.
        live_items=union_all(
            select(
                literal(1),
                ItemStats.item_id,
                ItemStats.popularity,
                ItemStats.ref_ts,
                ItemStats.counts,
            ).where(among(ItemStats.item_id, "ids")),
            select(literal(0), candidates.c.value, null(), null(), null()).where(
                ~exists().where(Item.id == candidates.c.value)
            ),
        ),
        deleted_since=deleted_since,
        ids=ids,
        user_with_covisits_driver=DriverStatement(
            user_with_covisits, bind.dialect, [c.type for c in user_columns]
        ),
        deleted_since_driver=DriverStatement(
            deleted_since, bind.dialect, [ItemTombstone.__table__.c.item_id.type]
        ),
    )
    # The driver statements keep the first engine's dialect, and with it its JSON decoder:
    # every engine here comes from engine.store.db.make_engine, which gives each the same one.
    return found
