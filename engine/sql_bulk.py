"""Multi-row writes for the event path: one statement per batch, whatever the batch size.

A batch of 500 events touches hundreds of user rows, item rows and thousands of co-visit
pairs. Sent row by row (executemany), PostgreSQL costs a protocol message per row, and
psycopg's per-row work in Python was most of an event's cost. Here PostgreSQL gets the
batch as one JSON document expanded by `json_to_recordset`, so a write is one statement
whose text does not depend on the batch size (psycopg prepares it once per connection).
SQLite runs in-process, where executemany is a C loop and already cheap, so it keeps that.

Values are plain Python (JSON columns as dicts and lists); rows are dicts keyed by column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import orjson
from sqlalchemy import JSON, DateTime, LargeBinary, Row, Table, bindparam, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.models import Base

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


def insert_rows(session: Session, model: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    """Insert the rows (no conflict handling), as cheaply in Python as each database allows.

    Written by background threads (impressions) that hold the GIL while they build
    parameters, so searches in the same process wait meanwhile: PostgreSQL gets one JSON
    document; SQLite gets the DBAPI's executemany with values already in its storage format
    (SQLAlchemy's per-row parameter processing cost about as much as the insert itself).
    """
    table = _table(model)
    if not rows:
        return
    columns = list(rows[0])
    if is_postgresql(session):
        session.execute(
            text(f"INSERT INTO {table.name} ({', '.join(columns)}) {_recordset(table, columns)}"),
            _document(table, columns, rows),
        )
        return
    convert = [_sqlite_value(table.c[c].type) for c in columns]
    values = [
        tuple(
            v if f is None or v is None else f(v)
            for f, v in zip(convert, (r[c] for c in columns), strict=True)
        )
        for r in rows
    ]
    cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(
            f"INSERT INTO {table.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})",
            values,
        )
    finally:
        cursor.close()


def _sqlite_value(column_type: Any) -> Any:
    """How SQLAlchemy stores a value of this type in SQLite, or None for as-is."""
    if isinstance(column_type, JSON):
        return json_text
    if isinstance(column_type, DateTime):
        return _sqlite_datetime
    return None


def json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def _sqlite_datetime(value: Any) -> str:
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
