"""Scoped API keys in SQL: create, list, revoke, and the per-process check of a presented key.

A key reads `rs_<scope>_<43 random characters>` (256 bits from `secrets`), so a leaked one
says what it opens and a secret scanner can match it. The database holds its public start
(`prefix`: the scope and 8 of the random characters) and the SHA-256 of the whole key, never
the key. A plain hash is right here, not a slow one (bcrypt, scrypt): a slow hash guards
passwords people choose, which a stolen table would let an attacker guess; 256 random bits
cannot be guessed however fast the hash, and a fast one costs a search nothing.

Scopes nest: `search` reads (search, similar items, one item), `events` adds posting events,
`admin` is everything, the data dir's key (engine.core.secrets) included. A search key is
safe in a browser: it reads only what a search page shows anyway.

Every server process keeps the keys it has checked for CACHE_S seconds (KeyCache), so a
request does not read SQL; a key revoked anywhere is refused by every server that shares
the database within CACHE_S of the revoke's commit, and an expired one at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from engine.core.clock import Clock, iso_z, utcnow
from engine.core.errors import InvalidInput, NotFound, Unauthenticated, shown
from engine.core.poller import Poller
from engine.store.models import ApiKey

log = logging.getLogger(__name__)

Scope = Literal["search", "events", "admin"]
SCOPES: tuple[Scope, ...] = ("search", "events", "admin")
# What a key of each scope may do: each scope includes the ones before it.
GRANTS: dict[str, frozenset[str]] = {
    "search": frozenset({"search"}),
    "events": frozenset({"search", "events"}),
    "admin": frozenset(SCOPES),
}
SECRET_BYTES = 32  # 256 bits; secrets.token_urlsafe writes them as 43 characters
PUBLIC_CHARS = 8  # random characters in the prefix, after "rs_<scope>_"
# How long a server process trusts what it read of a key: the bound on a revoke reaching it.
CACHE_S = 5.0
# last_used_at is written at most this often per key and process, by a background thread.
LAST_USED_EVERY_S = 60.0
MAX_CACHED = 10_000
MAX_NAME_CHARS = 200  # the column's length
_KEY = re.compile(rf"rs_({'|'.join(SCOPES)})_[A-Za-z0-9_-]{{{PUBLIC_CHARS},}}")
_DURATION = re.compile(r"(\d{1,6})\s*([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class KeyInfo:
    """A stored key as lists show it: everything but the key."""

    id: int
    prefix: str
    name: str | None
    scope: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime) -> str:
        """ "active", "revoked" or "expired" at `now` (naive UTC)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class NewKey:
    info: KeyInfo
    key: str  # shown once: only its hash is stored


def allows(scope: str, needed: str) -> bool:
    """Whether a key of `scope` may do what needs `needed` (a scope name)."""
    return needed in GRANTS.get(scope, frozenset())


def hash_key(key: str) -> str:
    """The SHA-256 of a key, as stored (hex)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def prefix_of(key: str) -> str | None:
    """The public start of a key in our format (or of its prefix alone); None otherwise."""
    match = _KEY.match(key)
    if match is None:
        return None
    return key[: len(match.group(1)) + 4 + PUBLIC_CHARS]


def create(
    session: Session,
    scope: str,
    *,
    name: str | None = None,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> NewKey:
    """Store a new key of `scope`; the returned NewKey holds the key, which is not kept.

    Raises InvalidInput for an unknown scope, a name over MAX_NAME_CHARS or an expiry not in
    the future (naive UTC).
    """
    if scope not in SCOPES:
        raise InvalidInput(f"scope {shown(scope)}: use one of {', '.join(SCOPES)}")
    if name is not None and len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"name {shown(name)}: at most {MAX_NAME_CHARS} characters")
    now = now or utcnow()
    if expires_at is not None and expires_at <= now:
        raise InvalidInput(f"expiry {iso_z(expires_at)} is not in the future")
    while True:
        key = f"rs_{scope}_{secrets.token_urlsafe(SECRET_BYTES)}"
        prefix = key[: len(f"rs_{scope}_") + PUBLIC_CHARS]
        # 48 random bits: a clash is a curiosity, but the unique index would refuse it.
        if session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix)) is None:
            break
    row = ApiKey(
        prefix=prefix,
        name=name or None,
        scope=scope,
        key_hash=hash_key(key),
        created_at=now,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return NewKey(_info(row), key)


def list_keys(session: Session) -> list[KeyInfo]:
    """Every stored key, revoked and expired ones too, oldest first."""
    return [_info(r) for r in session.scalars(select(ApiKey).order_by(ApiKey.id))]


def revoke(session: Session, which: str, now: datetime | None = None) -> tuple[KeyInfo, bool]:
    """Revoke the key with id, prefix (or whole key) `which`: (the key, whether this call
    revoked it; False when it already was). Raises NotFound naming `which`."""
    which = which.strip()
    prefix = prefix_of(which)
    if which.isdigit():
        row = session.get(ApiKey, int(which)) if int(which) < 2**31 else None
    elif prefix is not None:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    else:
        row = None
    if row is None:
        raise NotFound(f"API key {shown(which)}: no such id or prefix (see `recsearch key list`)")
    if row.revoked_at is not None:
        return _info(row), False
    row.revoked_at = now or utcnow()
    session.flush()
    return _info(row), True


def find(session: Session, key: str) -> KeyInfo | None:
    """The stored key that `key` is, whatever its state; None for any other string."""
    prefix = prefix_of(key)
    if prefix is None:
        return None  # not our format: no SQL
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    # The prefix found the row; the hash decides, compared in constant time.
    if row is None or not hmac.compare_digest(row.key_hash, hash_key(key)):
        return None
    return _info(row)


def record_use(session: Session, uses: dict[int, datetime]) -> None:
    """Move each key's last_used_at forward to its time in `uses` (never back)."""
    for key_id, used_at in uses.items():
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .where(or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < used_at))
            .values(last_used_at=used_at)
        )


def parse_expiry(text: str, now: datetime) -> datetime:
    """`30d`, `12h`, `90m`, `2w` from `now`, or an ISO 8601 date or time (a date is its
    00:00 UTC; a time without an offset is UTC), as naive UTC. Raises InvalidInput naming
    the text when it is neither, or not in the future."""
    value = text.strip()
    duration = _DURATION.fullmatch(value)
    try:
        if duration is not None:
            amount, unit = duration.groups()
            when = now + timedelta(**{_UNITS[unit]: int(amount)})
        else:
            when = datetime.fromisoformat(value)
            if when.tzinfo is not None:
                when = when.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):  # not a date, or past the year 9999
        raise InvalidInput(
            f"expiry {shown(text)}: give a duration (30d, 12h, 90m, 2w) or an ISO date or "
            "time (2027-01-31, 2027-01-31T18:00Z)"
        ) from None
    if when <= now:
        raise InvalidInput(f"expiry {shown(text)} ({iso_z(when)}) is not in the future")
    return when


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=row.id,
        prefix=row.prefix,
        name=row.name,
        scope=row.scope,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


class KeyCache:
    """The keys one server process has checked, each trusted for CACHE_S seconds.

    A key seen within CACHE_S is checked in memory (its hash, its expiry); after that, or
    never seen, one indexed SELECT reads its row again, so a revoke made by any process
    reaches this one within CACHE_S. Unknown keys are not kept: each one costs a SELECT,
    and web.auth's limit on wrong keys per address bounds how many. A database that cannot
    be read fails the request (503) rather than trust a stale row. Uses are gathered here and
    written by a background thread (a Poller), so a request never waits on a write lock.
    """

    def __init__(
        self,
        sessions: Callable[[], Session],
        ttl_s: float = CACHE_S,
        now: Clock = utcnow,
    ) -> None:
        self._sessions = sessions
        self.ttl_s = ttl_s
        self.now = now  # wall clock (naive UTC), for expiry and last use
        self.clock: Callable[[], float] = time.monotonic  # for the cache's age
        self._cached: dict[str, tuple[KeyInfo, float]] = {}  # hash -> (key, read at)
        self._uses: dict[int, datetime] = {}  # key id -> last use not yet written
        self._lock = threading.Lock()
        self._writer = Poller(
            "api key uses",
            self.write_uses,
            LAST_USED_EVERY_S,
            failed="writing API keys' last use failed",
            level=logging.WARNING,
        )

    def verify(self, key: str) -> KeyInfo:
        """The stored, live key that `key` is. Raises Unauthenticated: unknown, revoked (when
        and which) or expired (when and which)."""
        digest = hash_key(key)
        read_at = self.clock()
        with self._lock:
            hit = self._cached.get(digest)
        if hit is not None and read_at - hit[1] < self.ttl_s:
            info = hit[0]
        else:
            with self._sessions() as session:
                found = find(session, key)
            with self._lock:
                if found is None:
                    self._cached.pop(digest, None)
                else:
                    if len(self._cached) >= MAX_CACHED:
                        self._cached.clear()  # rebuilt by the next requests, one SELECT each
                    self._cached[digest] = (found, read_at)
            if found is None:
                raise Unauthenticated("unknown API key")
            info = found
        now = self.now()
        state = info.state(now)
        if state == "revoked":
            raise Unauthenticated(f"API key {info.prefix}… was revoked at {iso_z(info.revoked_at)}")
        if state == "expired":
            raise Unauthenticated(f"API key {info.prefix}… expired at {iso_z(info.expires_at)}")
        self._note_use(info, now)
        return info

    def forget(self) -> None:
        """Drop what this process has read (after a revoke here, say): the next check reads."""
        with self._lock:
            self._cached.clear()

    def write_uses(self) -> None:
        """Write the uses gathered since the last call (the background thread's round)."""
        with self._lock:
            uses, self._uses = self._uses, {}
        if uses:
            with self._sessions() as session, session.begin():
                record_use(session, uses)

    def close(self) -> None:
        self._writer.close()

    def _note_use(self, info: KeyInfo, now: datetime) -> None:
        last = info.last_used_at
        if last is not None and (now - last).total_seconds() < LAST_USED_EVERY_S:
            return  # as read at most CACHE_S ago: fresh enough
        with self._lock:
            self._uses[info.id] = now
        self._writer.start()
