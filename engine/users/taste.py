"""Taste vectors follow the serving encoder.

A user's taste vector is a decayed sum of item vectors (engine.users.profile), so it lies in
the space of the encoder whose item vectors went in: user_features.vector_encoder names it
(NULL: unknown, written before the first build or before the column). After the serving index
changes encoder (a tuned encoder promoted and built, or a rollback), a vector left in the old
space ranks the catalog noticeably differently (README, "A tuned encoder"). Each event's
coefficient, its weight decayed to the row's ref_ts, does not depend on the encoder, so the
vector is recomputed from the event log with the serving index's item vectors:

- record_events re-encodes a user it finds in another space while it folds their new events
  in, so a row never sums two spaces;
- the TasteFollower, run by one elected server process (as the embedding follower is),
  re-encodes every row in another space whenever the serving encoder changes, a batch of
  users per transaction under their row locks, and looks once more a little later for rows
  that workers still on the old index wrote meanwhile;
- `recsearch encoder reencode-users` does the same to completion from the command line.

Events of items that neither the serving index nor the catalog holds drop out of a recomputed
sum.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from engine.core.config import Settings
from engine.core.poller import Poller
from engine.index.vectors import ItemVectors
from engine.store import sql_bulk
from engine.store.db import WRITE_INTENT
from engine.store.election import Leadership
from engine.store.models import Event, UserFeatures
from engine.users.decay import as_of
from engine.users.events import EventIn
from engine.users.profile import UserState, event_weight

log = logging.getLogger(__name__)

# Users per transaction: their events read, their vectors summed, their rows written.
BATCH = 200

Taste = tuple[np.ndarray | None, float]  # the decayed vector sum and its weight


def stale(row: Any, space: str | None) -> bool:
    """Whether a user_features row's taste vector lies in another space than `space`."""
    return row.vector is not None and row.vector_encoder != space


def taste_counts(session: Session, space: str) -> tuple[int, int]:
    """(users with a taste vector, those of them in another space than `space`)."""
    count = select(func.count()).select_from(UserFeatures)
    tasted = session.scalar(count.where(UserFeatures.vector.is_not(None)))
    return tasted or 0, session.scalar(count.where(*_stale_rows(space))) or 0


def _stale_rows(space: str) -> tuple[Any, ...]:
    """The conditions of stale(), in SQL."""
    return (
        UserFeatures.vector.is_not(None),
        or_(UserFeatures.vector_encoder.is_(None), UserFeatures.vector_encoder != space),
    )


def reencode(
    session: Session,
    settings: Settings,
    vectors: ItemVectors,
    refs: Mapping[str, datetime | None],
) -> tuple[str | None, dict[str, Taste]]:
    """Each user's taste recomputed from the event log with the serving index's item vectors,
    decayed to refs[user] (the row's ref_ts); returns the space with them. The caller holds
    the users' rows locked, so no event of theirs lands in between."""
    users = sorted(refs)
    rows = session.execute(
        select(Event.user_id, Event.item_id, Event.type, Event.value, Event.ts)
        .where(Event.user_id.in_(users))
        .order_by(Event.user_id, Event.ts, Event.id)
    ).all()
    weights = settings.type_weights()
    events = [EventIn(r.user_id, r.item_id, r.type, r.ts, r.value) for r in rows]
    weight = [event_weight(e, settings, weights) for e in events]
    space, vector_of = vectors.lookup(
        session, {e.item_id for e, w in zip(events, weight, strict=True) if w != 0.0}
    )
    states = {user: UserState(user) for user in users}
    for event, w in zip(events, weight, strict=True):
        vector = vector_of.get(event.item_id) if w != 0.0 else None
        states[event.user_id].apply(event, w, None, (), vector, settings.half_life_s, 0)
    tastes: dict[str, Taste] = {}
    for user, state in states.items():
        ref = refs[user]
        f = as_of(1.0, state.ref_ts, ref, settings.half_life_s) if ref is not None else 1.0
        tastes[user] = (
            None if state.vector is None else state.vector * f,
            state.vector_weight * f,
        )
    return space, tastes


def reencode_stale(
    sessions: Callable[[], Session],
    settings: Settings,
    vectors: ItemVectors,
    space: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Re-encode every user whose taste vector lies in another space than `space`, a batch per
    transaction; returns how many. Stops early (the next pass goes on) if the serving index
    moves to yet another encoder meanwhile."""
    done = 0
    after = ""
    while True:
        with sessions() as session:
            session.connection(execution_options=WRITE_INTENT)
            ids = session.scalars(
                select(UserFeatures.user_id)
                .where(UserFeatures.user_id > after, *_stale_rows(space))
                .order_by(UserFeatures.user_id)
                .limit(BATCH)
            ).all()
            if not ids:
                return done
            rows = sql_bulk.select_for_update(session, UserFeatures, "user_id", list(ids))
            refs = {row.user_id: row.ref_ts for row in rows if stale(row, space)}
            found, tastes = reencode(session, settings, vectors, refs)
            if found != space:
                return done
            sql_bulk.update_rows(
                session,
                UserFeatures,
                "user_id",
                [
                    {
                        "user_id": user,
                        "vector": None if vector is None else vector.tobytes(),
                        "vector_weight": weight,
                        "vector_encoder": space,
                    }
                    for user, (vector, weight) in tastes.items()
                ],
            )
            session.commit()
        done += len(refs)
        after = ids[-1]
        if progress is not None:
            progress(done)


class TasteFollower:
    """Keeps every stored taste vector in the serving index's encoder space: the elected
    process re-encodes stale rows each time that encoder changes (and at its election), then
    once more `settle_s` later, when every worker serves the new index.

    `leadership` may be shared (the runtime hands it the embedding follower's, so one process
    leads both): the follower never releases it; its owner does."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        vectors: ItemVectors,
        leadership: Leadership,
        poll_s: float,
        settle_s: float,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.vectors = vectors
        self.leadership = leadership
        self.settle_s = settle_s
        self.reencoded = 0  # users this process has re-encoded, for tests and reports
        self._done: str | None = None  # the space of the last finished pass
        self._again_at: float | None = None  # when to look once more for that space
        self._lock = threading.Lock()
        self._poller = Poller(
            "taste-follower",
            self.run_once,
            max(poll_s, 0.02),
            at_start=True,
            failed="re-encoding users' taste vectors failed",
            on_error=lambda _: self._forget(),
        )

    def start(self) -> None:
        self._poller.start()

    def close(self) -> None:
        self._poller.close(timeout_s=10)

    def _forget(self) -> None:
        with self._lock:
            self._done = None

    def run_once(self) -> int:
        """If this process leads, re-encode what the serving encoder's change left stale;
        returns how many users."""
        with self._lock:
            if self._poller.stopping.is_set() or not self.leadership.try_acquire():
                self._done = None  # a leader elected later starts with a pass of its own
                return 0
            artifact = self.vectors.live.get_or_none()
            if artifact is None:
                return 0
            space = artifact.model_name
            now = time.monotonic()
            if space == self._done and (self._again_at is None or now < self._again_at):
                return 0
            count = reencode_stale(self.sessions, self.settings, self.vectors, space)
            if count:
                log.info("re-encoded %d users' taste vectors for encoder %s", count, space)
            self.reencoded += count
            self._again_at = now + self.settle_s if space != self._done else None
            self._done = space
            return count
