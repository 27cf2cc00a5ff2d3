"""The one decay rule (engine.users.decay): folding is order-independent and reads as
Σ w·2^-age/h."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from engine.users.decay import as_of, rebase

HALF_LIFE_S = 86_400.0
T0 = datetime(2026, 1, 1)
EVENTS = st.lists(
    st.tuples(st.integers(0, 30 * 86_400), st.floats(0, 5, allow_nan=False)),
    min_size=1,
    max_size=20,
)


def fold(events: list[tuple[int, float]]) -> tuple[float, datetime]:
    value, ref = 0.0, None
    for seconds, weight in events:
        ref, kept, age_factor = rebase(ref, T0 + timedelta(seconds=seconds), HALF_LIFE_S)
        value = value * kept + weight * age_factor
    assert ref is not None
    return value, ref


@given(events=EVENTS, order=st.randoms(use_true_random=False))
def test_any_order_gives_the_same_sum(events: list[tuple[int, float]], order: object) -> None:
    shuffled = list(events)
    order.shuffle(shuffled)  # type: ignore[attr-defined]
    (a, ref_a), (b, ref_b) = fold(events), fold(shuffled)
    assert ref_a == ref_b == T0 + timedelta(seconds=max(s for s, _ in events))
    assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@given(events=EVENTS, later_s=st.integers(0, 10 * 86_400))
def test_read_later_is_the_decayed_sum(events: list[tuple[int, float]], later_s: int) -> None:
    value, ref = fold(events)
    now = ref + timedelta(seconds=later_s)
    direct = sum(
        w * 2 ** (-(now - T0 - timedelta(seconds=s)).total_seconds() / HALF_LIFE_S)
        for s, w in events
    )
    assert math.isclose(as_of(value, ref, now, HALF_LIFE_S), direct, rel_tol=1e-9, abs_tol=1e-12)
    assert as_of(value, ref, ref - timedelta(days=1), HALF_LIFE_S) == value  # never grows
