"""Taste vectors follow the serving encoder (engine.users.taste): a row in another encoder's
space is summed again from the event log, by the follower, by the command line and by the next
event's write, and the result is what recording every event in the new space leaves.

The switch between two real encoders (base and tuned) is tested with the tuned encoder itself:
tests/indexer/test_encoder_tuning.py."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from click.testing import CliRunner
from sqlalchemy import select, update

from engine.runtime import Runtime
from engine.search.request import SearchRequest
from engine.store.election import SoleLeadership
from engine.store.models import Item, UserFeatures
from engine.users.events import EventIn
from engine.users.profile import UserState
from engine.users.taste import TasteFollower, reencode_stale
from tests.users.test_recording import (
    Reference,
    first_occurrences,
    item_ids,
    record,
    seeded_stream,
)
from web.cli import Context, cli


def users(runtime: Runtime) -> dict[str, UserState]:
    with runtime.session() as session:
        return {r.user_id: UserState.from_row(r) for r in session.scalars(select(UserFeatures))}


def mark(runtime: Runtime, space: str | None, user_ids: list[str] | None = None) -> None:
    """Say the rows' vectors lie in `space`, as rows written by another encoder's index do."""
    statement = update(UserFeatures).values(vector_encoder=space)
    if user_ids is not None:
        statement = statement.where(UserFeatures.user_id.in_(user_ids))
    with runtime.write_session() as session:
        session.execute(statement)


def status(runtime: Runtime) -> str:
    context = Context(runtime.settings, quiet=True, runtime=runtime)
    result = CliRunner().invoke(cli, ["status"], obj=context)
    assert result.exit_code == 0, result.output
    return result.output


def reference(runtime: Runtime, events: list[EventIn]) -> dict[str, UserState]:
    """Every event folded in memory, in the serving index's item vectors."""
    with runtime.session() as session:
        meta = {
            r.id: (r.category, list(r.tags or []))
            for r in session.execute(select(Item.id, Item.category, Item.tags))
        }
        vectors = runtime.vectors.get(session, {e.item_id for e in events})
    folded = Reference(runtime.settings, meta, vectors)
    for e in events:
        folded.apply(e)
    return folded.users


def assert_same_taste(a: UserState, b: UserState) -> None:
    assert (a.vector is None) == (b.vector is None)
    if a.vector is not None and b.vector is not None:
        # Summed in another order than the events came in: the same to rounding.
        np.testing.assert_allclose(a.vector, b.vector, rtol=1e-9, atol=1e-12)
    assert abs(a.vector_weight - b.vector_weight) <= 1e-9 * max(1.0, abs(b.vector_weight))


def test_stale_tastes_are_summed_again_from_the_log_and_written_events_stamp_their_space(
    built: Runtime,
) -> None:
    space = built.live.get().model_name
    events = seeded_stream(item_ids(built)[:40], 300, seed=5)
    record(built, events, batch=50)
    recorded = users(built)
    with_taste = sorted(u for u, s in recorded.items() if s.vector is not None)
    assert len(with_taste) >= 10 and recorded["u0"].vector is None  # impressions only
    assert {recorded[u].encoder for u in with_taste} == {space}

    # Rows from before the column (NULL) and from another encoder's index are both stale.
    mark(built, None, with_taste[:4])
    mark(built, f"{space}@v000009", with_taste[4:])
    assert (
        f"users      {len(with_taste)} with a taste vector, {len(with_taste)} of them in another "
        "encoder's space" in status(built)
    )
    progress: list[int] = []
    count = reencode_stale(built.sessions, built.settings, built.vectors, space, progress.append)
    assert count == len(with_taste) and progress[-1] == count
    again = users(built)
    for user in recorded:
        assert_same_taste(again[user], recorded[user])
        assert again[user].encoder == (space if user in with_taste else recorded[user].encoder)
        assert again[user].event_count == recorded[user].event_count  # nothing else moved
    assert reencode_stale(built.sessions, built.settings, built.vectors, space) == 0
    assert f"users      {len(with_taste)} with a taste vector\n" in status(built)

    # An event for a stale user: the write sums the user again, with the new event.
    user = with_taste[0]
    mark(built, "elsewhere", [user])
    later = EventIn(user, item_ids(built)[50], "purchase", max(e.ts for e in events))
    record(built, [later], batch=1)
    written = users(built)[user]
    assert written.encoder == space
    expected = reference(built, [*first_occurrences(events), later])[user]
    assert_same_taste(written, expected)
    assert written.event_count == expected.event_count


def test_the_follower_passes_when_the_encoder_changes_and_once_more_after_the_workers(
    built: Runtime,
) -> None:
    record(built, seeded_stream(item_ids(built)[:30], 120, seed=3, users=6), batch=40)
    tasted = sorted(u for u, s in users(built).items() if s.vector is not None)
    follower = TasteFollower(
        built.sessions, built.settings, built.vectors, SoleLeadership(), 60.0, settle_s=0.0
    )
    mark(built, "old-encoder")
    assert follower.run_once() == len(tasted)  # its first pass: the encoder "changed"
    # A worker still on the old index wrote a row meanwhile: the pass after settling finds it.
    mark(built, "old-encoder", tasted[:1])
    assert follower.run_once() == 1
    # Then nothing more until the serving encoder changes again.
    mark(built, "old-encoder", tasted[:1])
    assert follower.run_once() == 0
    assert follower.reencoded == len(tasted) + 1


def test_a_follower_that_does_not_lead_leaves_the_rows(built: Runtime) -> None:
    class Elsewhere(SoleLeadership):
        def try_acquire(self) -> bool:
            return False

    record(built, seeded_stream(item_ids(built)[:20], 60, seed=4, users=4), batch=60)
    mark(built, "old-encoder")
    follower = TasteFollower(
        built.sessions, built.settings, built.vectors, Elsewhere(), 60.0, settle_s=0.0
    )
    assert follower.run_once() == 0
    stale: Any = {s.encoder for s in users(built).values() if s.vector is not None}
    assert stale == {"old-encoder"}


def test_a_serving_runtime_re_encodes_stale_tastes_on_its_own(built: Runtime) -> None:
    """The runtime's follower (started with its first search, on the embedding follower's
    election) finds rows another encoder's index left and re-encodes them."""
    record(built, seeded_stream(item_ids(built)[:20], 80, seed=6, users=5), batch=80)
    recorded = users(built)
    mark(built, "old-encoder")
    built.search(SearchRequest(q="a quiet beach", k=3))  # starts the followers
    space = built.live.get().model_name
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = users(built)
        if all(s.encoder == space for s in now.values() if s.vector is not None):
            break
        time.sleep(0.1)
    for user, state in users(built).items():
        if state.vector is not None:
            assert state.encoder == space
            assert_same_taste(state, recorded[user])
    assert built.tastes.reencoded == sum(1 for s in recorded.values() if s.vector is not None)
