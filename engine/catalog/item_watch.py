"""Per process: the two things SQL changes about items between builds that every search needs,
which items were deleted and how popular each is, followed in the background.

A search used to ask SQL about each of its ~200 candidates (does it still exist, how popular
is it). Here one background poll per process keeps:
- popularity (and the event count) of every item with interactions: the whole of item_stats
  once, then the rows written since the last poll (item_stats.updated_at). Issue 9 lets
  popularity lag a second; it lags at most one poll (delta_poll_s, 0.5 s by default).
- the deleted items: every tombstone once, then those written since, less the ids written
  again since they were deleted (a re-written id drops its tombstone, engine.catalog.items). Every
  RESYNC_S the whole tombstone table is read again in place of what was followed, so the
  deletions a build pruned (indexer.build: older than every version it keeps) leave this
  process's memory too; without that the set would grow for the life of the process.

Deletions may not lag: a deleted item must vanish from the next search in every process. So
a search still reads SQL once for them (SqlState): the tombstones written since `horizon`,
an index range read that nearly always returns nothing. That is enough because of how the
horizon is taken (engine.catalog.items.settled_before): every write stamped before it had committed
when the poll read, so the poll saw it.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from engine.catalog.items import settled_before
from engine.core.poller import Poller
from engine.store.models import Item, ItemStats, ItemTombstone

# An item's interactions as stored: its popularity, a decayed sum, as (value, as of when),
# which engine.users.decay.as_of reads at a moment; and how many events it has had in all.
Stored = tuple[float, datetime | None, int]


def event_total(counts: dict[str, int] | None) -> int:
    """An item's events of every type (item_stats.counts), the count co-visits are damped by
    (engine.search.candidates)."""
    return sum(counts.values()) if counts else 0


# How often the poll reads every tombstone instead of those written since the last poll.
# The table holds about a day of deletions (indexer.build prunes it), an index scan.
RESYNC_S = 300.0


class ItemWatch:
    """Popularity and deletions of the catalog's items, as of `horizon`, for one process.

    Readers use the fields directly and never lock: the poll writes single dict entries
    (atomic in CPython) and moves `horizon` only after what it read is in place, so a reader
    that sees the new horizon sees everything before it.
    """

    def __init__(
        self, sessions: sessionmaker[Session], poll_s: float, resync_s: float = RESYNC_S
    ) -> None:
        self.sessions = sessions
        self.poll_s = max(poll_s, 0.05)
        self.resync_s = resync_s
        self._synced_at = 0.0  # time.monotonic() of the last whole read of the tombstones
        self.popularity: dict[str, Stored] = {}  # items with no row have none (0)
        self.deleted: dict[str, datetime] = {}  # id → when its tombstone was written
        self.horizon: datetime | None = None  # None until the first read
        self._lock = threading.Lock()  # one refresh at a time
        # A failed poll is retried at the next; searches read the tombstones since horizon.
        self._poller = Poller(
            "items", self.refresh, self.poll_s, failed="following popularity and deletions failed"
        )

    def ready(self) -> bool:
        """Whether searches can use it; the first call reads the tables (once per process)
        and starts the poll."""
        if self.horizon is None:
            self.refresh()
            self._poller.start()
        return self.horizon is not None

    def refresh(self) -> None:
        """Read what changed since the horizon (everything, the first time; every tombstone
        again each resync_s)."""
        with self._lock, self.sessions() as session:
            since = self.horizon
            horizon = settled_before(session)  # before the reads: see the module's docstring
            stats = select(
                ItemStats.item_id, ItemStats.popularity, ItemStats.ref_ts, ItemStats.counts
            )
            tombstones = select(ItemTombstone.item_id, ItemTombstone.deleted_at)
            resync = since is None or time.monotonic() - self._synced_at >= self.resync_s
            if since is not None:
                stats = stats.where(ItemStats.updated_at >= since)
            if not resync:
                tombstones = tombstones.where(ItemTombstone.deleted_at >= since)
            for item_id, popularity, ref, counts in session.execute(stats):
                self.popularity[item_id] = (popularity or 0.0, ref, event_total(counts))
            if resync:
                # The table as it stands: a re-written id has no tombstone left, a pruned one
                # is gone. Swapped in whole, so a reader sees the old set or the new one.
                self.deleted = {i: when for i, when in session.execute(tombstones)}
                self._synced_at = time.monotonic()
            else:
                for item_id, deleted_at in session.execute(tombstones):
                    self.deleted[item_id] = deleted_at
            if not resync and self.deleted:  # (a resync reads the table as it stands)
                # Written again after its tombstone: the item exists (its tombstone is gone).
                rewritten = session.execute(
                    select(Item.id, Item.updated_at).where(Item.updated_at >= since)
                )
                for item_id, updated_at in rewritten:
                    when = self.deleted.get(item_id)
                    if when is not None and updated_at >= when:
                        del self.deleted[item_id]
            self.horizon = horizon if since is None else max(since, horizon)

    def close(self) -> None:
        self._poller.close()
