"""Migrations create the schema on an empty SQLite or PostgreSQL database, once, concurrently."""

from __future__ import annotations

import math
import socket
import threading
from datetime import datetime, timedelta

import orjson
import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.orm import Session

from engine.core.config import Settings
from engine.runtime import Runtime
from engine.store import db, sql_bulk
from engine.store.db import current_revision, ensure_schema, head_revision, make_engine, upgrade
from engine.store.models import Impression


def test_upgrade_creates_schema_and_is_idempotent(settings: Settings) -> None:
    engine = make_engine(settings)
    assert current_revision(engine) is None
    before, after = upgrade(engine)
    assert (before, after) == (None, head_revision())
    tables = set(inspect(engine).get_table_names())
    assert {"items", "index_versions", "alembic_version"} <= tables
    columns = {c["name"] for c in inspect(engine).get_columns("items")}
    assert {"id", "title", "text", "category", "tags", "attributes", "created_at"} <= columns
    assert upgrade(engine) == (head_revision(), head_revision())
    engine.dispose()


def test_the_schema_head_is_alembics_and_the_revision_is_read_as_alembic_reads_it(
    settings: Settings,
) -> None:
    """ensure_schema compares the database with SCHEMA_HEAD, read without alembic: a new
    migration must move the constant, and the read must agree with alembic's own."""
    from alembic.runtime.migration import MigrationContext

    assert db.SCHEMA_HEAD == head_revision()
    engine = make_engine(settings)
    try:
        ensure_schema(engine)
        with engine.connect() as connection:
            alembics = MigrationContext.configure(connection).get_current_revision()
        assert current_revision(engine) == alembics == db.SCHEMA_HEAD
        with engine.begin() as connection:  # a database one migration behind is upgraded
            connection.execute(text("UPDATE alembic_version SET version_num = '0016'"))
            connection.execute(text("ALTER TABLE user_features DROP COLUMN vector_encoder"))
        assert current_revision(engine) == "0016"
        ensure_schema(engine)
        assert current_revision(engine) == db.SCHEMA_HEAD
    finally:
        engine.dispose()


def test_concurrent_first_use_migrates_once(settings: Settings) -> None:
    errors: list[BaseException] = []

    def first_use() -> None:
        engine = make_engine(settings)
        try:
            ensure_schema(engine)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine = make_engine(settings)
    assert current_revision(engine) == head_revision()
    engine.dispose()
    assert errors == []


def test_bulk_inserted_rows_read_back_as_the_orm_wrote_them(runtime: Runtime) -> None:
    """sql_bulk.insert_rows writes values in each database's own format (SQLite: JSON text
    and SQLAlchemy's timestamp text) from one JSON array: the ORM reads back exactly what
    went in (floats to the last bit, unicode, quotes), and rows it wrote itself compare and
    sort with them."""
    ts = datetime(2026, 11, 29, 12, 0, 0)  # no microseconds: the format must still match
    rows = [
        {
            "request_id": f"r{n}",
            "user_id": None if n else "ann",
            "item_id": f"i{n}",
            "position": n,
            "features": {"names": ["a", 'b "é"'], "values": [0.1 * n, 1e-300, 1 / 3]},
            "model_version": "m",
            "index_version": "v",
            "ts": ts + timedelta(microseconds=n),
            "experiment_id": None,
            "team": "live" if n else None,
        }
        for n in range(3)
    ]
    columns = list(rows[0])
    with runtime.session() as session:
        stamp = sql_bulk.timestamp_text(session)
        sql_bulk.insert_rows(
            session,
            Impression,
            columns,
            [
                [
                    sql_bulk.json_text(r[c])
                    if c == "features"
                    else stamp(r[c])
                    if c == "ts"
                    else r[c]
                    for c in columns
                ]
                for r in rows
            ],
        )
        session.add(
            Impression(
                request_id="orm",
                item_id="x",
                position=0,
                features={},
                model_version="m",
                index_version="v",
                ts=ts + timedelta(microseconds=1, seconds=-1),
            )
        )
    with runtime.session() as session:
        stored = session.scalars(select(Impression).order_by(Impression.ts)).all()
        after = session.scalars(select(Impression.request_id).where(Impression.ts >= ts)).all()
    assert [r.request_id for r in stored] == ["orm", "r0", "r1", "r2"]
    for row, wrote in zip(stored[1:], rows, strict=True):
        got = {k: getattr(row, k) for k in wrote}
        assert got == wrote
    assert sorted(after) == ["r0", "r1", "r2"]


def test_json_columns_read_with_orjson_and_old_nan_tokens_still_read(settings: Settings) -> None:
    """JSON columns decode with orjson on both databases; on SQLite, a row written by the
    json module before (a NaN token, which orjson refuses) still reads."""
    engine = make_engine(settings)
    try:
        upgrade(engine)
        loads = engine.dialect._json_deserializer
        sqlite = engine.dialect.name == "sqlite"
        assert loads is (db._json_loads_lenient if sqlite else orjson.loads)
        assert loads('{"a": [1, 2.5]}') == {"a": [1, 2.5]}
        if not sqlite:
            return  # PostgreSQL refuses NaN in JSON on the way in
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO impressions (request_id, item_id, position, features, model_version,"
                " index_version, ts) VALUES ('old', 'x', 0, '{\"values\": [NaN, 1.0]}', 'm', 'v',"
                " '2026-11-29 12:00:00.000000')"
            )
        with Session(engine) as session:
            features = session.scalars(select(Impression.features)).one()
        assert math.isnan(features["values"][0]) and features["values"][1] == 1.0
    finally:
        engine.dispose()


def test_a_driver_statement_that_cannot_connect_raises_dbapierror(db_url: str) -> None:
    """A search's direct reads fail as SQLAlchemy's DBAPIError when the server cannot be
    reached, as Session reads do: a read replica that just went down then costs the search
    nothing (engine.runtime.search catches DBAPIError), instead of a 500."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has no server to be unreachable")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from engine.store.db import DriverStatement
    from engine.store.models import Item

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = create_engine(make_url(db_url).set(host="127.0.0.1", port=port))
    try:
        statement = DriverStatement(
            select(Item.id).where(Item.id == "x"), engine.dialect, [Item.id.type]
        )
        with pytest.raises(DBAPIError) as raised:
            statement.rows(engine, {"id_1": "x"})
        assert "127.0.0.1" in str(raised.value) and str(port) in str(raised.value)
    finally:
        engine.dispose()
