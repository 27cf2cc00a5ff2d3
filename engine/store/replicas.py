"""PostgreSQL streaming replicas for search reads, each skipped while it lags or fails.

`ReplicaRouter.pick(user_id)` names the replica a search may read, or None for the primary.
A Poller measures every replica each `_POLL_S`: it reads the primary's WAL position (L at
monotonic time t, taken before the read), then the replica's replay position R. Every commit
that returned before t ends at or below L, so once R >= L the replica holds all of them: its
`safe_at` is the latest such t. Its lag is `now - safe_at`, counted at the moment of each pick,
so an idle primary (L does not move, R reaches it) shows no lag, and a replica whose poll
stalls or fails ages out by itself.

A replica is picked while its lag is within `replica_max_lag_s`. A user who wrote (events)
at monotonic time w reads the primary until a replica's `safe_at` >= w: read-your-writes.
w is known in the process that wrote (`note_write`, after the commit) and, through
PostgreSQL LISTEN/NOTIFY on `USER_WRITES` (sent in the writer's transaction, delivered at
commit), in every other process of the fleet, as the time the notification arrived. Writes
committed before this process began to listen were not heard: replicas serve only once their
`safe_at` has passed that moment (and again after the listening connection is replaced).
The one window left is a notification's flight, from the primary's commit to the listening
thread (about a millisecond): a search that reaches another process sooner than that can
read a replica that lacks the write.

Why not the user's row: on a replica it says what the replica has, not what it lacks, and
asking the primary for each user's last write costs every personalized search a round trip
to the primary, which is what replicas are for. Why not sessions pinned to a server: the
API has no sessions; clients may send one user's events and searches to any server.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.core.poller import Poller

log = logging.getLogger(__name__)

# The channel that carries the ids of users who just wrote, to every server: one per line (ids
# hold no control characters, engine.core.contract).
USER_WRITES = "recsearch_user_writes"
# How often each replica's position is measured (seconds).
_POLL_S = 0.2
# A connection to a replica that does not answer gives up after this many seconds.
_CONNECT_TIMEOUT_S = 2
# NOTIFY payloads must stay under 8000 bytes.
_PAYLOAD_BYTES = 7000
_PRIMARY_LSN = text("SELECT pg_current_wal_lsn()::text")
_REPLAY_LSN = text("SELECT pg_last_wal_replay_lsn()::text")


def replica_urls(settings: Settings) -> list[str]:
    """The configured replica URLs; each must be PostgreSQL, as the primary must be."""
    urls = [u.strip() for u in settings.database_replica_url.split(",") if u.strip()]
    if urls and make_url(settings.db_url).get_backend_name() != "postgresql":
        raise ConfigError(
            "RECSEARCH_DATABASE_REPLICA_URL: replicas need a PostgreSQL RECSEARCH_DATABASE_URL"
        )
    for url in urls:
        if make_url(url).get_backend_name() != "postgresql":
            raise ConfigError(f"RECSEARCH_DATABASE_REPLICA_URL: {url!r} is not PostgreSQL")
    return urls


def lsn(value: str) -> int:
    """A WAL position ('16/B374D848') as a number."""
    high, low = value.split("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass
class Replica:
    name: str  # host:port/database, no password: the metrics label
    engine: Engine
    sessions: sessionmaker[Session]
    safe_at: float | None = None  # monotonic: every commit that returned before it is here
    is_up: bool = False  # its last measurement (or read) succeeded
    reads: int = 0  # searches that read it
    failures: int = 0  # reads or measurements that failed
    _samples: list[tuple[float, int]] = field(default_factory=list)


class ReplicaRouter:
    """The replicas of one process: measured in the background, picked per search."""

    def __init__(
        self,
        settings: Settings,
        primary: Engine,
        make_engine: Callable[[str], Engine],
        *,
        poll_s: float = _POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_lag_s = settings.replica_max_lag_s
        self.clock = clock
        self._primary = primary
        self.replicas = [_replica(url, make_engine) for url in replica_urls(settings)]
        self._writes: dict[str, float] = {}  # user id -> monotonic time of their last write
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._poller = Poller(
            "replica-lag", self.measure, poll_s, at_start=True, level=logging.WARNING
        )
        self._listen_engine = create_engine(primary.url, poolclass=NullPool)
        self._listener = Poller(
            "replica-user-writes",
            self._listen,
            1.0,
            at_start=True,
            failed="listening for users' writes failed; retrying",
            level=logging.WARNING,
        )
        self.listening = threading.Event()
        # When the LISTEN began (monotonic; None while not listening): writes committed before
        # it were not heard, so a replica serves only once its safe_at has passed it.
        self._heard_since: float | None = None

    def start(self) -> None:
        self._poller.start()
        self._listener.start()

    def lag_s(self, replica: Replica) -> float | None:
        """How far behind the primary the replica is now; None while never measured."""
        if replica.safe_at is None:
            return None
        return max(0.0, self.clock() - replica.safe_at)

    def pick(self, user_id: str | None) -> Replica | None:
        """A replica that may serve this search, or None (read the primary)."""
        if not self._poller.started:
            self.start()
        heard_since = self._heard_since
        if heard_since is None:
            return None
        now = self.clock()
        wrote_at = self._writes.get(user_id) if user_id is not None else None
        after = heard_since if wrote_at is None else max(heard_since, wrote_at)
        usable = [
            r
            for r in self.replicas
            if r.is_up
            and r.safe_at is not None
            and r.safe_at >= after
            and now - r.safe_at <= self.max_lag_s
        ]
        if not usable:
            return None
        replica = usable[next(self._turn) % len(usable)]
        replica.reads += 1
        return replica

    def failed(self, replica: Replica) -> None:
        """A read on the replica failed: skip it until the next measurement succeeds."""
        replica.is_up = False
        replica.failures += 1

    def note_write(self, user_ids: Iterable[str]) -> None:
        """These users' writes have committed: their searches read the primary until a
        replica has replayed them."""
        now = self.clock()
        with self._lock:
            for user_id in user_ids:
                self._writes[user_id] = now

    def announce_writes(self, session: Session, user_ids: Sequence[str]) -> None:
        """Tell every server, when this transaction commits, which users wrote."""
        chunk: list[str] = []
        size = 0
        for user_id in sorted(set(user_ids)):
            if chunk and size + len(user_id.encode()) + 1 > _PAYLOAD_BYTES:
                _notify(session, chunk)
                chunk, size = [], 0
            chunk.append(user_id)
            size += len(user_id.encode()) + 1
        if chunk:
            _notify(session, chunk)

    def measure(self) -> None:
        """One round: the primary's position, then each replica's replay position."""
        started = self.clock()
        with self._primary.connect() as connection:
            primary_lsn = lsn(connection.execute(_PRIMARY_LSN).scalar_one())
        for replica in self.replicas:
            self._measure(replica, started, primary_lsn)
        with self._lock:  # writes older than any usable replica's safe_at need no memory
            horizon = self.clock() - self.max_lag_s
            for user_id in [u for u, at in self._writes.items() if at < horizon]:
                del self._writes[user_id]

    def _measure(self, replica: Replica, started: float, primary_lsn: int) -> None:
        samples = replica._samples
        samples.append((started, primary_lsn))
        # Samples older than the bound only say "too far behind", which no sample also says.
        while len(samples) > 1 and samples[1][0] < started - self.max_lag_s:
            samples.pop(0)
        try:
            with replica.engine.connect() as connection:
                replayed = connection.execute(_REPLAY_LSN).scalar_one()
        except Exception as error:
            if replica.is_up or replica.failures == 0:
                log.warning(
                    "replica %s is unreachable; reading the primary: %s", replica.name, error
                )
            replica.is_up = False
            replica.failures += 1
            return
        if replayed is None:  # not in recovery, so not a replica: never read it
            if replica.is_up or replica.failures == 0:
                log.warning("%s is not a streaming replica: reading the primary", replica.name)
            replica.is_up = False
            replica.failures += 1
            return
        position = lsn(replayed)
        caught_up = [at for at, wal in samples if wal <= position]
        if caught_up:
            replica.safe_at = max(caught_up)
            samples[:] = [(at, wal) for at, wal in samples if wal > position]  # still ahead
        replica.is_up = True

    def _listen(self) -> None:
        with self._listen_engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        ) as connection:
            connection.exec_driver_sql(f'LISTEN "{USER_WRITES}"')
            driver = connection.connection.driver_connection
            assert driver is not None
            self._heard_since = self.clock()
            self.listening.set()
            try:
                while not self._listener.stopping.is_set():
                    for note in driver.notifies(timeout=1.0, stop_after=1):
                        self.note_write(u for u in note.payload.split("\n") if u)
            finally:
                self._heard_since = None
                self.listening.clear()

    def close(self) -> None:
        self._poller.close()
        self._listener.close(timeout_s=3.0)
        self._listen_engine.dispose()
        for replica in self.replicas:
            replica.engine.dispose()


def _notify(session: Session, user_ids: list[str]) -> None:
    session.execute(
        text("SELECT pg_notify(:channel, :ids)"),
        {"channel": USER_WRITES, "ids": "\n".join(user_ids)},
    )


def _replica(url: str, make_engine: Callable[[str], Engine]) -> Replica:
    parsed = make_url(url)
    if "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(_CONNECT_TIMEOUT_S)})
    engine = make_engine(parsed.render_as_string(hide_password=False))
    name = f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"
    return Replica(name=name, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
