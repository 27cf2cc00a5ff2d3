"""Multi-row writes for the event path: one statement per batch, whatever the batch size.

A batch of 500 events touches hundreds of user rows, item rows and thousands of co-visit
pairs. Sent row by row (executemany), PostgreSQL costs a protocol message per row, and
psycopg's per-row work in Python was most of an event's cost. Here PostgreSQL gets the
batch as one JSON document expanded by `json_to_recordset`, so a write is one statement
whose text does not depend on the batch size (psycopg prepares it once per connection).
SQLite runs in-process, where executemany is a C loop and already cheap, so it keeps that,
except for insert_rows (impressions, written beside searches), which reads one JSON array
on both databases.

Values are plain Python (JSON columns as dicts and lists); rows are dicts keyed by column,
except insert_rows' (lists in a given column order, values as JSON holds them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import DateTime, LargeBinary, Row, Table, bindparam, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.store.models import Base

_PG = postgresql.dialect()


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def insert_missing(
    session: Session, model: type[Base], key: str, rows: Sequence[dict[str, Any]]
) -> None:
    """Insert the rows whose key is not stored yet; existing rows are left as they are."""
    table = _table(model)
    if not rows:
        return
    if is_postgresql(session):
        columns = list(rows[0])
        session.execute(
            text(
                f"INSERT INTO {table.name} ({', '.join(columns)}) {_recordset(table, columns)} "
                f"ON CONFLICT ({key}) DO NOTHING"
            ),
            _document(table, columns, rows),
        )
    else:
        session.execute(sqlite.insert(table).on_conflict_do_nothing(index_elements=[key]), rows)


def insert_rows(
    session: Session, model: type[Base], columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert rows given as lists in `columns` order, in one statement that reads them from
    one JSON array (no conflict handling). Values go as the array holds them: strings,
    numbers and None as they are, a JSON column's value as its JSON text (json_text), a
    timestamp as timestamp_text(session) makes it.

    Written by background threads (impressions) that hold the GIL while they build
    parameters, so searches in the same process wait meanwhile. Here the Python is one list
    per row and one orjson call per batch; the database parses the array in C. On SQLite
    the insert is then a single step, which the driver runs with the GIL released, where
    executemany took it back after every row (each time forcing a search thread to yield).
    """
    table = _table(model)
    if not rows:
        return
    document = orjson.dumps(rows).decode()
    if is_postgresql(session):
        picks = ", ".join(f"CAST(v ->> {n} AS {_pg_type(table, c)})" for n, c in enumerate(columns))
        source = "json_array_elements(CAST(:rows AS json)) AS v"
    else:
        # json_extract gives a JSON column's text (a JSON string in the array) unescaped and
        # byte for byte, numbers as numbers, null as NULL.
        picks = ", ".join(f"json_extract(value, '$[{n}]')" for n in range(len(columns)))
        source = "json_each(:rows)"
    session.execute(
        text(f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT {picks} FROM {source}"),
        {"rows": document},
    )


def timestamp_text(session: Session) -> Callable[[datetime], str]:
    """How insert_rows' array holds a timestamp for this session's database: SQLite gets
    the text SQLAlchemy stores (so rows compare and sort with the ORM's), PostgreSQL ISO
    8601, which it parses into its own type."""
    return datetime.isoformat if is_postgresql(session) else _sqlite_datetime


def json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def _sqlite_datetime(value: datetime) -> str:
    return str(value.strftime("%Y-%m-%d %H:%M:%S.%f"))  # SQLAlchemy's SQLite DateTime format


def insert_new_keys(
    session: Session, model: type[Base], key: str, rows: Sequence[dict[str, Any]]
) -> list[Any]:
    """Insert the rows, skipping those whose (unique) key is stored; return the inserted
    rows' keys (None for a row with a NULL key, which never conflicts)."""
    table = _table(model)
    if not rows:
        return []
    if is_postgresql(session):
        columns = list(rows[0])
        result = session.execute(
            text(
                f"INSERT INTO {table.name} ({', '.join(columns)}) {_recordset(table, columns)} "
                f"ON CONFLICT ({key}) DO NOTHING RETURNING {key}"
            ),
            _document(table, columns, rows),
        )
        return list(result.scalars())
    # SQLAlchemy turns this into multi-row INSERT ... RETURNING statements (insertmanyvalues).
    stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=[key]).returning(table.c[key])
    return list(session.execute(stmt, list(rows)).scalars())


def select_for_update(
    session: Session, model: type[Base], key: str, ids: Sequence[str]
) -> list[Row]:
    """The rows for ids in key order, locked FOR UPDATE on PostgreSQL until the transaction
    ends (the caller's order of locking is what prevents deadlocks; SQLite's write
    transaction already excludes other writers)."""
    table = _table(model)
    if not ids:
        return []
    column = table.c[key]
    if is_postgresql(session):
        names = ", ".join(c.name for c in table.c)
        query = text(
            f"SELECT {names} FROM {table.name} "
            f"WHERE {key} = ANY(CAST(:ids AS {_pg_type(table, key)}[])) ORDER BY {key} FOR UPDATE"
        ).columns(*table.c)  # typed, so JSON columns come back as Python values
        return list(session.execute(query, {"ids": list(ids)}))
    return list(session.execute(select(table).where(column.in_(list(ids))).order_by(column)))


def update_rows(
    session: Session, model: type[Base], key: str, rows: Sequence[dict[str, Any]]
) -> None:
    """Set the given columns of existing rows, matched by key (each row names its key)."""
    table = _table(model)
    if not rows:
        return
    columns = list(rows[0])
    values = [c for c in columns if c != key]
    if is_postgresql(session):
        assignments = ", ".join(f"{c} = v.{c}" for c in values)
        session.execute(
            text(
                f"UPDATE {table.name} AS t SET {assignments} FROM ({_recordset(table, columns)}) "
                f"AS v WHERE t.{key} = v.{key}"
            ),
            _document(table, columns, rows),
        )
        return
    stmt = (
        update(table)
        .where(table.c[key] == bindparam(f"_{key}"))
        .values({c: bindparam(c) for c in values})
    )
    session.execute(stmt, [{f"_{key}": r[key], **{c: r[c] for c in values}} for r in rows])


def add_to(
    session: Session,
    model: type[Base],
    keys: Sequence[str],
    column: str,
    rows: Sequence[dict[str, Any]],
    chunk: int = 5_000,
) -> None:
    """Add each row's value to the stored column (inserting absent rows) atomically, rows in
    the given order; keys must be unique within rows (a statement cannot touch a row twice)."""
    table = _table(model)
    if not rows:
        return
    target = ", ".join(keys)
    if is_postgresql(session):
        columns = [*keys, column]
        stmt = text(
            f"INSERT INTO {table.name} ({', '.join(columns)}) {_recordset(table, columns)} "
            f"ON CONFLICT ({target}) DO UPDATE SET {column} = {table.name}.{column} + "
            f"excluded.{column}"
        )
        # Chunks bound one statement's memory; each is still one round trip.
        for start in range(0, len(rows), chunk):
            session.execute(stmt, _document(table, columns, rows[start : start + chunk]))
        return
    insert = sqlite.insert(table)
    upsert = insert.on_conflict_do_update(
        index_elements=list(keys), set_={column: table.c[column] + insert.excluded[column]}
    )
    session.execute(upsert, list(rows))


def _table(model: type[Base]) -> Table:
    return cast(Table, model.__table__)


def _pg_type(table: Table, column: str) -> str:
    return str(table.c[column].type.compile(dialect=_PG))


def _recordset(table: Table, columns: Sequence[str]) -> str:
    """SELECT of the batch's rows from one JSON parameter (:rows), typed as the columns.

    One JSON document per batch: orjson writes it fast, and PostgreSQL parses it in one go, where
    per-column array parameters cost psycopg a regex escape per value. Timestamps travel as
    ISO 8601, floats as repr (read back exactly). Binary values, a user's vector being most
    of a row, would double as hex: they go in one bytea parameter per column (:c_blob, sent
    in binary), each row holding its value's offset and length.
    """
    fields, exprs = [], []
    for c in columns:
        if isinstance(table.c[c].type, LargeBinary):
            fields += [f"{c} integer", f"{c}_len integer"]
            exprs.append(f"substring(CAST(:{c}_blob AS bytea) FROM v.{c} FOR v.{c}_len) AS {c}")
        else:
            fields.append(f"{c} {_pg_type(table, c)}")
            exprs.append(f"v.{c}")
    return (
        f"SELECT {', '.join(exprs)} FROM json_to_recordset(CAST(:rows AS json)) "
        f"AS v({', '.join(fields)})"
    )


def _document(
    table: Table, columns: Sequence[str], rows: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The parameters for _recordset: :rows, and :c_blob for each binary column c."""
    params: dict[str, Any] = {}
    binary = [c for c in columns if isinstance(table.c[c].type, LargeBinary)]
    stamps = [c for c in columns if isinstance(table.c[c].type, DateTime)]
    if binary or stamps:
        rows = [dict(r) for r in rows]
        for c in stamps:
            for r in rows:
                r[c] = None if r[c] is None else r[c].isoformat()
        for c in binary:
            parts: list[bytes] = []
            offset = 1  # SQL substring counts from 1
            for r in rows:
                value = r[c]
                if value is None:
                    r[c] = r[f"{c}_len"] = None
                    continue
                parts.append(bytes(value))
                r[c], r[f"{c}_len"] = offset, len(value)
                offset += len(value)
            params[f"{c}_blob"] = b"".join(parts)
    params["rows"] = orjson.dumps(rows).decode()  # 5-10x faster than json.dumps here
    return params
