"""MMR and category caps: a subset with no repeats, the ranker's order at 0, caps honoured."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.search.diversify import diversify


def _unit(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 40),
    k=st.integers(0, 50),
    diversity=st.floats(0, 1),
    cap=st.one_of(st.none(), st.integers(1, 4)),
    seed=st.integers(0, 2**32 - 1),
)
def test_picks_are_a_subset_without_repeats(
    n: int, k: int, diversity: float, cap: int | None, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    relevance = rng.random(n)
    categories = [rng.choice(["a", "b", "c", None]) for _ in range(n)]
    picks = diversify(
        relevance,
        _unit(rng, n),
        k,
        diversity=diversity,
        categories=categories,
        max_per_category=cap,
    )
    indices = [p.index for p in picks]
    assert len(indices) == len(set(indices)) <= min(k, n)
    assert all(0 <= i < n for i in indices)
    if cap is None:
        assert len(indices) == min(k, n)
    else:
        for c in ("a", "b", "c"):
            assert sum(1 for i in indices if categories[i] == c) <= cap


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_no_diversity_is_the_rankers_order(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    relevance = np.round(rng.random(n), 1)  # ties on purpose: input order breaks them
    picks = diversify(relevance, _unit(rng, n), n)
    expected = sorted(range(n), key=lambda i: (-relevance[i], i))
    assert [p.index for p in picks] == expected


def test_diversity_skips_near_duplicates() -> None:
    # Three copies of one vector rank first; a different item ranks fourth.
    base = np.array([1.0, 0.0, 0.0])
    other = np.array([0.0, 1.0, 0.0])
    vectors = np.stack([base, base, base, other])
    relevance = np.array([0.9, 0.89, 0.88, 0.6])
    plain = [p.index for p in diversify(relevance, vectors, 2)]
    mixed = diversify(relevance, vectors, 2, diversity=0.5)
    assert plain == [0, 1]
    assert [p.index for p in mixed] == [0, 3]
    assert mixed[1].redundancy == pytest.approx(0.0)
    assert [p.index for p in diversify(relevance, vectors, 2, diversity=0.05)] == [0, 1]


def test_cap_leaves_fewer_rather_than_break_it() -> None:
    vectors = np.eye(4)
    picks = diversify(
        np.array([0.9, 0.8, 0.7, 0.6]),
        vectors,
        4,
        categories=["a", "a", "a", None],
        max_per_category=1,
    )
    assert [p.index for p in picks] == [0, 3]


def test_bad_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match="diversity"):
        diversify(np.zeros(2), np.zeros((2, 3)), 1, diversity=1.5)
    with pytest.raises(ValueError, match="2 relevance values but 3 vectors"):
        diversify(np.zeros(2), np.zeros((3, 3)), 1)
