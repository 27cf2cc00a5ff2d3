"""Past queries' answers as logged clicks: the prior a live engine learns from its own traffic.

In a running engine, the items that answered earlier queries are clicked, and those clicks
feed the `popularity` feature. An offline evaluation has no traffic, but its train split is
the same thing: each train query's relevant items are what a searcher would have clicked.
Here they become click events (one pseudo-user per train query, all at one past moment) and
go through the engine's own update rules (engine.users.replay.ReplayState, the same as
record_events), held in memory so the user's database is never written.

A ranker must not see a query's own clicks in that query's features, or it learns that
popularity is the answer. Training examples are therefore cross-fitted: the train queries
are split into folds and each fold's features come from the clicks of the other folds only.
The test queries see every train click and none of their own judgments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.core.config import Settings
from engine.store.models import Item
from engine.users.events import EventIn
from engine.users.replay import ReplayState

# Every pseudo-click happens at one moment, a day before the state is read: decay then scales
# all popularity alike, and the figures do not depend on the day the evaluation runs.
CLICKED_AT = datetime(2000, 1, 1)
READ_AT = CLICKED_AT + timedelta(days=1)


def judgment_clicks(
    judged: Mapping[str, Mapping[str, float]], user_prefix: str = "judged-query-"
) -> list[EventIn]:
    """One click per (query, item) judged relevant (grade > 0), by a pseudo-user per query;
    judged: query (id or text) → {item id: grade}."""
    return [
        EventIn(f"{user_prefix}{n}", item_id, "click", CLICKED_AT)
        for n, (_, grades) in enumerate(sorted(judged.items()))
        for item_id, grade in sorted(grades.items())
        if grade > 0
    ]


def click_state(session: Session, settings: Settings, clicks: Sequence[EventIn]) -> ReplayState:
    """Users, popularity and co-visits after the given clicks, in memory, read at READ_AT."""
    meta = {
        r.id: (r.category, list(r.tags or []))
        for r in session.execute(select(Item.id, Item.category, Item.tags))
    }
    # No item vectors: the pseudo-users never search, so their taste vectors are not needed.
    state = ReplayState(settings, meta, {})
    for event in sorted(clicks, key=lambda e: (e.ts, e.user_id, e.item_id)):
        state.apply(event)
    state.now = READ_AT
    return state


def fold_of(query_ids: Sequence[str], folds: int, seed: int = 0) -> dict[str, int]:
    """Each query id's fold (0..folds-1): a seeded shuffle dealt round-robin, so the folds
    differ in size by at most one."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    order = np.random.default_rng(seed).permutation(len(query_ids))
    return {query_ids[i]: n % folds for n, i in enumerate(order.tolist())}


def cross_fitted_states(
    session: Session,
    settings: Settings,
    judged: Mapping[str, Mapping[str, float]],
    folds: int = 10,
    seed: int = 0,
) -> tuple[dict[str, int], list[ReplayState]]:
    """(query → fold, one state per fold built from every other fold's clicks); judged:
    query → {item id: grade}, as judgment_clicks takes it."""
    fold = fold_of(sorted(judged), folds, seed)
    states = [
        click_state(
            session, settings, judgment_clicks({q: g for q, g in judged.items() if fold[q] != f})
        )
        for f in range(folds)
    ]
    return fold, states
