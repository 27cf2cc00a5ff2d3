"""Errors that mean the database is away for a moment, not a bug: the server restarting or
stopped, a connection it dropped, a lock it could not get in time, or no space to write.

A request that meets one is worth sending again later, so the web layer answers 503 with
Retry-After (507 when the database's disk is full) instead of 500. Classified by what the
error is (SQLAlchemy's wrappers, the driver's own classes, PostgreSQL's SQLSTATE), never by
where it was raised, so every route gets the same answer.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# Seconds a client should wait before sending again: a PostgreSQL restart took 3.4 s here,
# and a client that comes back sooner only gets another 503.
RETRY_AFTER_S = 2

# SQLSTATE classes and codes of a server that cannot serve now (PostgreSQL appendix A):
# 08 connection exception, 57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect
# now (starting up or shutting down), 53300 too many connections, 40001/40P01 a transaction
# the server chose to abort (serialization failure, deadlock): each succeeds when re-sent.
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03", "53300", "40001", "40P01")
_FULL_STATES = ("53100",)  # disk full


@dataclass(frozen=True)
class Outage:
    """How to answer a request that met the database away."""

    status: int  # 503, or 507 when the database cannot store anything more
    code: str
    message: str
    retry_after_s: int = RETRY_AFTER_S


UNAVAILABLE = Outage(
    503,
    "database_unavailable",
    f"the database is unavailable for the moment; send the request again in {RETRY_AFTER_S} s",
)
# Retry-After for a full disk: space comes back when someone frees it, not in seconds.
FULL_RETRY_AFTER_S = 30


def full(where: str) -> Outage:
    return Outage(
        507,
        "insufficient_storage",
        f"no space left on the disk of {where}; this request was not stored",
        FULL_RETRY_AFTER_S,
    )


def outage_of(error: BaseException, database: str = "the database") -> Outage | None:
    """The outage error (or one it was raised from) says, or None for any other error.
    database: how to name the database in a 507 (its file, or its server)."""
    for exc in _chain(error):
        driver: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
        if _is_full(driver):
            filename = getattr(driver, "filename", None)
            return full(str(filename) if filename else database)
        if isinstance(driver, sqlite3.Error):
            # SQLite's OperationalError also means "no such table" (a bug): only a lock held
            # too long or a file it cannot open or write is the database being away.
            if any(word in str(driver).lower() for word in _SQLITE_AWAY):
                return UNAVAILABLE
            continue
        state = getattr(driver, "sqlstate", None)
        if isinstance(state, str) and state.startswith(_UNAVAILABLE_STATES):
            return UNAVAILABLE
        if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
            return UNAVAILABLE  # refused, dropped, timed out
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return UNAVAILABLE
        # The driver's own connection errors, raised past SQLAlchemy's wrappers.
        kind = type(exc)
        if kind.__module__.startswith("psycopg") and kind.__name__ in _DRIVER_AWAY:
            return UNAVAILABLE
    return None


_SQLITE_AWAY = ("locked", "busy", "unable to open", "disk i/o", "readonly")
_DRIVER_AWAY = ("OperationalError", "InterfaceError")


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error) and "full" in str(exc):
        return True  # "database or disk is full"
    if getattr(exc, "sqlstate", None) in _FULL_STATES:
        return True
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
