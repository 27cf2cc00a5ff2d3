"""Database engines, sessions and schema migrations (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import sqlite3
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.core.files import create_private_file, locked, make_private_dir
from engine.store import sql_bulk

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest migration in migrations/versions: a new migration moves it (a test compares it
# with alembic's head_revision()).
SCHEMA_HEAD = "0017"
VERSION_TABLE = "alembic_version"  # alembic's default, which migrations/env.py keeps
# An arbitrary constant: the PostgreSQL advisory lock that serializes concurrent migrators.
_MIGRATION_LOCK_ID = 7_262_026


def make_engine(settings: Settings, *, for_searches: bool = False) -> Engine:
    """An SQLAlchemy engine for settings.db_url; SQLite gets WAL and a busy timeout.

    for_searches (PostgreSQL): a pool for reads that may be retried (engine.runtime's
    searches), in autocommit and without the ping each checkout otherwise costs.
    """
    url = make_url(settings.db_url)
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            _create_private_file(Path(url.database))
        # Flask serves requests on threads; each connection is still used by one at a time.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        # orjson, as on PostgreSQL (every search with a user decodes seven JSON columns of
        # its row, every event batch more); rows written before JSON was written by orjson
        # may hold NaN tokens, which only the json module reads.
        kwargs["json_deserializer"] = _json_loads_lenient
    elif url.get_backend_name() == "postgresql":
        if for_searches:
            # Each statement sees what was committed when it ran, with no BEGIN and COMMIT
            # round trips; a dropped connection fails the search, which runs once more.
            kwargs["isolation_level"] = "AUTOCOMMIT"
        else:
            # A connection the server dropped (a restart, a failover) is found and replaced
            # at checkout, for one round trip: writes and jobs never meet it.
            kwargs["pool_pre_ping"] = True
        # User rows carry JSON columns read on every event batch: orjson decodes them about
        # 3x faster than the json module (a tenth of the write path's time on PostgreSQL).
        kwargs["json_deserializer"] = orjson.loads
    else:
        raise ConfigError(
            f"RECSEARCH_DATABASE_URL: unsupported database {url.get_backend_name()!r}; "
            "use sqlite:///... or postgresql+psycopg://..."
        )
    # JSON columns are written on every event batch and every impression flush (ten rows of
    # features per search, in a background thread that holds the GIL meanwhile): orjson
    # encodes them several times faster than the json module. Non-finite floats, which are
    # not JSON, become null rather than a NaN token PostgreSQL would refuse.
    kwargs["json_serializer"] = _json_dumps
    engine = create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _json_dumps(value: Any) -> str:
    return sql_bulk.json_text(value)


def _json_loads_lenient(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:  # NaN or Infinity, written by the json module
        return json.loads(text)


# Execution option for a transaction that will read then write rows others may write too
# (user features): on SQLite it takes the write lock up front (BEGIN IMMEDIATE), so two
# writers queue instead of one failing to upgrade its read lock; PostgreSQL uses row locks.
WRITE_INTENT = {"recsearch_write_intent": True}


# Execution option of SQLite's search engine (engine.runtime): no BEGIN, so each statement
# reads in a transaction of its own, as searches on PostgreSQL do (AUTOCOMMIT). A search reads
# one statement nearly always; the BEGIN and the ROLLBACK around it cost as much as a third of
# that statement (0.08 of 0.24 ms through a session, measured alone).
SQLITE_AUTOCOMMIT = {"recsearch_sqlite_autocommit": True}


def _sqlite_begin(connection: Connection) -> None:
    options = connection.get_execution_options()
    if options.get("recsearch_sqlite_autocommit", False):
        return  # the driver is in autocommit (isolation_level None): nothing to begin
    immediate = options.get("recsearch_write_intent", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_begin): pysqlite's implicit transactions
    # start late, skip DDL, and cannot take the write lock first.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets the server read while an ingest or build in another process writes.
    _journal_mode_wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# How long a connection waits to switch a database to WAL (the busy timeout's length).
_WAL_WAIT_S = 30.0


def _journal_mode_wal(cursor: Any) -> None:
    """PRAGMA journal_mode=WAL, waiting while another connection holds a lock.

    Switching the journal mode does not wait on SQLite's busy handler: on a database that is
    new (still in rollback mode), a connection that opens while another one reads or
    migrates fails at once with "database is locked". Workers that start together on a fresh
    data dir did: 2 first uses in 40 failed so (four threads each, tests/test_db.py's
    test_concurrent_first_use_migrates_once). Once the file is in WAL mode the pragma is a
    read that no one blocks.
    """
    deadline = time.monotonic() + _WAL_WAIT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _create_private_file(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (it would take the umask, often 0644).

    Events are personal data. SQLite gives its -wal and -shm files the database file's mode.
    An existing file keeps its mode, with a warning when others can read it.
    """
    make_private_dir(path.parent)
    if create_private_file(path):
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning(
            "%s is open to other users (mode %03o) and holds personal data: chmod 600 it",
            path,
            mode,
        )


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest migration, as alembic reads it from migrations/versions (SCHEMA_HEAD)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (alembic's version table), None before the first
    migration; one read, without importing alembic."""
    with engine.connect() as connection:
        return _revision_of(connection)


def _revision_of(connection: Connection) -> str | None:
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    found = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    return None if found is None else str(found)


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Apply pending migrations; return (revision before, revision after).

    Safe to call from several processes at once: PostgreSQL takes an advisory lock, SQLite
    a lock file beside the database, and the revision is read again under the lock.
    """
    with _sqlite_file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            lock = text("SELECT pg_advisory_xact_lock(:id)")
            connection.execute(lock, {"id": _MIGRATION_LOCK_ID})
        before = _revision_of(connection)
        head = head_revision()
        if before != head:
            from alembic import command

            log.info("migrating database from %s to %s", before, head)
            command.upgrade(_alembic_config(connection), "head")
    return before, head


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        yield
        return
    with locked(Path(f"{database}.migrate-lock")):
        yield


def ensure_schema(engine: Engine) -> None:
    """Upgrade the schema when it is not at SCHEMA_HEAD; one read when it is (alembic, a
    quarter of a second of imports for every command and worker, loads only to migrate)."""
    if current_revision(engine) != SCHEMA_HEAD:
        upgrade(engine)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class DriverStatement:
    """A statement SQLAlchemy compiles once for a dialect and that then runs on a pooled
    DBAPI connection itself, with the bind and result processors of its types applied here.

    For the one or two small reads of every search: through a Session, checking out its
    connection, executing and building the Result cost 0.3 ms of a 0.35 ms tombstone read
    here, and the user's read 0.2 ms more than the statement (tests/test_lean_search.py
    checks that both ways read the same values). Errors come out as SQLAlchemy's DBAPIError, and a
    connection the database dropped is invalidated with the pool's idle ones and reported
    as `connection_invalidated`, as Connection.execute does, so a search runs again.
    """

    def __init__(self, statement: Any, dialect: Any, result_types: Sequence[Any]) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self._order = list(compiled.positiontup or ()) if compiled.positional else None
        self._binds = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        self._dialect = dialect
        self._types = [t.dialect_impl(dialect) for t in result_types]
        # Result processors by the driver's type codes (a processor may depend on them: a
        # PostgreSQL numeric's does); one entry nearly always.
        self._results: dict[tuple[Any, ...], list[Any]] = {}

    def rows(self, engine: Engine, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Every row, each value as SQLAlchemy would have returned it."""
        values = {
            k: self._binds[k](v) if k in self._binds and v is not None else v
            for k, v in params.items()
        }
        parameters: Any = values if self._order is None else tuple(values[k] for k in self._order)
        try:
            connection = engine.raw_connection()
        except engine.dialect.loaded_dbapi.Error as error:
            # The pool could not connect (a server down or restarting): raw_connection gives
            # the driver's own error, where Connection wraps it; callers catch DBAPIError.
            raise DBAPIError.instance(
                self.sql,
                parameters,
                error,
                engine.dialect.loaded_dbapi.Error,
                dialect=engine.dialect,
            ) from error
        cursor = None
        try:
            cursor = connection.cursor()
            cursor.execute(self.sql, parameters)
            raw = cursor.fetchall()
            codes = tuple(d[1] for d in cursor.description)
        except engine.dialect.loaded_dbapi.Error as error:
            dropped = engine.dialect.is_disconnect(error, connection.dbapi_connection, cursor)
            if dropped:
                connection.invalidate(error)
                engine.pool.dispose()  # its idle connections met the same end, most likely
            raise DBAPIError.instance(
                self.sql,
                parameters,
                error,
                engine.dialect.loaded_dbapi.Error,
                connection_invalidated=dropped,
                dialect=engine.dialect,
            ) from error
        finally:
            if cursor is not None:
                cursor.close()
            connection.close()  # back to the pool, which resets it
        processors = self._results.get(codes)
        if processors is None:
            processors = self._results[codes] = [
                t.result_processor(self._dialect, code)
                for t, code in zip(self._types, codes, strict=True)
            ]
        if all(p is None for p in processors):
            return [tuple(r) for r in raw]
        return [
            tuple(v if p is None or v is None else p(v) for p, v in zip(processors, r, strict=True))
            for r in raw
        ]
