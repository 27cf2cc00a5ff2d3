"""User features: decay arithmetic, order independence, and no lost updates under concurrency."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.config import Settings
from engine.runtime import Runtime
from engine.users.events import EventIn
from engine.users.profile import UserState, event_weight, load_user
from engine.users.recording import record_events
from indexer.ingest import ingest
from tests.conftest import write_jsonl

T0 = datetime(2026, 1, 1)
DAY = 86_400.0


def unit(seed: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_event_weights_and_ratings() -> None:
    s = Settings()
    w = s.type_weights()
    assert event_weight(EventIn("u", "i", "purchase", T0), s, w) == 5.0
    assert event_weight(EventIn("u", "i", "impression", T0), s, w) == 0.0
    assert event_weight(EventIn("u", "i", "rating", T0, value=5), s, w) == 3.0
    assert event_weight(EventIn("u", "i", "rating", T0, value=1), s, w) == -3.0


def test_decay_halves_after_one_half_life() -> None:
    state = UserState("u")
    old = EventIn("u", "a", "click", T0)
    new = EventIn("u", "b", "click", T0 + timedelta(days=30))
    state.apply(old, 2.0, "beach", ["sun"], unit(1), 30 * DAY, 50)
    state.apply(new, 2.0, "city", [], unit(2), 30 * DAY, 50)
    assert state.category_affinity == {"beach": 1.0, "city": 2.0}
    assert state.tag_affinity == {"sun": 1.0}
    np.testing.assert_allclose(state.vector, unit(1) + 2 * unit(2), rtol=1e-6)
    assert [r[0] for r in state.recent] == ["b", "a"]
    assert state.counts == {"click": 2} and state.ref_ts == new.ts


def test_a_low_rating_pushes_away() -> None:
    state = UserState("u")
    state.apply(EventIn("u", "a", "rating", T0, value=1), -3.0, "desert", [], unit(3), DAY, 50)
    assert state.category_affinity["desert"] < 0
    assert state.unit_vector() is not None
    assert float(state.unit_vector() @ unit(3)) < -0.99


_events = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 90 * 24), st.sampled_from(["view", "click"])),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40)
@given(events=_events, seed=st.integers(0, 10**6))
def test_state_does_not_depend_on_event_order(
    events: list[tuple[int, int, str]], seed: int
) -> None:
    def run(order: list[tuple[int, int, str]]) -> UserState:
        state = UserState("u")
        for item, hours, kind in order:
            event = EventIn("u", f"i{item}", kind, T0 + timedelta(hours=hours))
            w = 1.0 if kind == "view" else 2.0
            state.apply(event, w, f"c{item % 3}", [f"t{item % 2}"], unit(item), 7 * DAY, 10)
        return state

    shuffled = list(events)
    np.random.default_rng(seed).shuffle(shuffled)
    a, b = run(events), run(shuffled)
    assert a.ref_ts == b.ref_ts and a.counts == b.counts and a.event_count == b.event_count
    np.testing.assert_allclose(a.vector, b.vector, rtol=1e-9, atol=1e-12)
    assert a.category_affinity.keys() == b.category_affinity.keys()
    for key in a.category_affinity:
        assert abs(a.category_affinity[key] - b.category_affinity[key]) < 1e-9
    assert {tuple(r) for r in a.recent} == {tuple(r) for r in b.recent}


def test_concurrent_writers_lose_no_update(runtime: Runtime, tmp_path: Path) -> None:
    """Many threads send events for one user at once; counts and vector come out exact."""
    items = [{"id": f"i{n}", "title": f"Item {n}", "category": f"c{n % 3}"} for n in range(10)]
    with runtime.session() as session:
        ingest(runtime, session, write_jsonl(tmp_path / "c.jsonl", items))
    # No index: vectors are encoded on demand; warm them so threads only race on SQL.
    with runtime.session() as session:
        item_vectors = runtime.vectors.get(session, [i["id"] for i in items])
    threads, per_thread = 8, 20
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(w: int) -> None:
        try:
            barrier.wait()
            for n in range(per_thread):
                event = EventIn(
                    "hot-user", f"i{(w + n) % 10}", "click", T0 + timedelta(minutes=w * 100 + n)
                )
                with runtime.write_session() as session:
                    record_events(session, [event], runtime.settings, runtime.vectors)
        except BaseException as exc:  # asserted below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []

    expected = UserState("hot-user")
    half_life_s = runtime.settings.half_life_days * DAY
    for w in range(threads):
        for n in range(per_thread):
            item = f"i{(w + n) % 10}"
            event = EventIn("hot-user", item, "click", T0 + timedelta(minutes=w * 100 + n))
            category = f"c{int(item[1:]) % 3}"
            expected.apply(event, 2.0, category, [], item_vectors[item], half_life_s, 50)
    with runtime.session() as session:
        stored = load_user(session, "hot-user")
    assert stored is not None
    assert stored.event_count == threads * per_thread == 160
    assert stored.counts == {"click": 160}
    np.testing.assert_allclose(stored.vector, expected.vector, rtol=1e-9)
    assert stored.category_affinity.keys() == expected.category_affinity.keys()
    for key, value in expected.category_affinity.items():
        assert abs(stored.category_affinity[key] - value) < 1e-9
