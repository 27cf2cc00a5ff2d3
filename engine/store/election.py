"""Electing one process among every server on a database to do a job once for all of them.

PostgreSQL: a session advisory lock held on a dedicated connection. SQLite: an flock on a
file beside the database. Either lock belongs to the connection or the open file, so when
the holder dies, even by SIGKILL, the server (or the kernel) releases it and the next try
from another process wins: re-election needs no heartbeat and no timeout.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from abc import ABC, abstractmethod
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from engine.core.files import try_lock

log = logging.getLogger(__name__)


class Leadership(ABC):
    """One lock that at most one process holds at a time; try it as often as you like."""

    @abstractmethod
    def try_acquire(self) -> bool:
        """True while this object holds the lock: takes it if free, and checks that a lock
        it holds is still held (a PostgreSQL connection can drop). Never blocks for long."""

    @abstractmethod
    def release(self) -> None:
        """Give the lock up (idempotent)."""


def leadership_for(engine: Engine, name: str) -> Leadership:
    """The lock called name for the database behind engine."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return PostgresLeadership(engine, _lock_key(name))
    database = url.database
    if not database or database == ":memory:":
        return SoleLeadership()  # an in-memory database has one process by definition
    return FileLeadership(Path(f"{database}.{name}-lock"))


def _lock_key(name: str) -> int:
    # A stable 63-bit key per name (pg_try_advisory_lock takes a bigint), apart from the
    # migration lock's small constant in engine.store.db.
    return (zlib.crc32(f"recsearch:{name}".encode()) << 16) | 0x52_53


class PostgresLeadership(Leadership):
    """pg_try_advisory_lock on a connection of its own (outside the pool: the lock must never
    go back to it with the connection), closed on release."""

    def __init__(self, engine: Engine, key: int) -> None:
        # NullPool: closing really closes, so a lock holder's session ends with it.
        self._engine = create_engine(engine.url, poolclass=NullPool)
        self._key = key
        self._conn: Connection | None = None
        self._held = False
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT"
                    )
                if self._held:
                    self._conn.execute(text("SELECT 1"))  # still connected, so still held
                else:
                    got = self._conn.execute(
                        text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key}
                    ).scalar()
                    self._held = bool(got)
            except Exception:  # a dropped connection took the lock with it; retry later
                log.warning("the lock connection failed; retrying", exc_info=True)
                self._close()
            return self._held

    def release(self) -> None:
        with self._lock:
            self._close()
        self._engine.dispose()

    def _close(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            try:
                conn.close()  # ends the session, which releases its advisory locks
            except Exception:
                log.debug("closing the lock connection failed", exc_info=True)


class FileLeadership(Leadership):
    """An exclusive flock on a file; one open file per holder, so two holders in one process
    exclude each other too (flock locks belong to the open file, not the process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self._fd is None:
                self._fd = try_lock(self.path)
            return self._fd is not None

    def release(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)  # releases the lock


class SoleLeadership(Leadership):
    """Always held: for a database only this process can open."""

    def try_acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass
