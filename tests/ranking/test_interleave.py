"""Team-draft interleaving's invariants and the sign test against exact binomial tails."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.ranking.interleave import credit, sign_test, team_draft

_ids = st.lists(st.sampled_from([f"i{n}" for n in range(30)]), unique=True, max_size=20)


@settings(max_examples=150, deadline=None)
@given(live=_ids, candidate=_ids, k=st.integers(0, 25), seed=st.integers(0, 2**32 - 1))
def test_team_draft_invariants(live: list[str], candidate: list[str], k: int, seed: int) -> None:
    shown, team = team_draft(live, candidate, k, random.Random(seed))
    pool = set(live) | set(candidate)
    assert len(shown) == len(set(shown)) == min(k, len(pool))
    assert set(team) == set(shown)
    for side, ranking in (("live", live), ("candidate", candidate)):
        mine = [i for i in shown if team[i] == side]
        assert all(i in ranking for i in mine)
        # each side contributes its items in its own order
        assert mine == sorted(mine, key=ranking.index)
    # while both sides still have items, neither gets two picks ahead
    for end in range(1, len(shown) + 1):
        prefix = shown[:end]
        n_live = sum(1 for i in prefix if team[i] == "live")
        n_cand = end - n_live
        live_left = any(i not in prefix[:-1] for i in live)
        cand_left = any(i not in prefix[:-1] for i in candidate)
        if live_left and cand_left:
            assert abs(n_live - n_cand) <= 1


def test_identical_rankings_give_the_same_list_and_split_the_credit() -> None:
    ranking = [f"i{n}" for n in range(10)]
    shown, team = team_draft(ranking, ranking, 10, random.Random(1))
    assert shown == ranking
    assert sorted(team.values()).count("live") == 5


def test_credit() -> None:
    team = {"a": "live", "b": "candidate", "c": "candidate"}
    assert credit(team, ["b"]) == "win"
    assert credit(team, ["a"]) == "loss"
    assert credit(team, ["a", "b"]) == "tie"
    assert credit(team, ["a", "b", "c"]) == "win"
    assert credit(team, ["zzz"]) is None


@pytest.mark.parametrize(
    ("wins", "losses"), [(10, 0), (0, 10), (5, 5), (7, 3), (60, 40), (0, 0), (1, 0)]
)
def test_sign_test_matches_the_exact_binomial_tail(wins: int, losses: int) -> None:
    n = wins + losses
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n if n else 0.5
    assert sign_test(wins, losses) == pytest.approx(min(1.0, 2 * tail), rel=1e-9)


def test_sign_test_is_finite_for_many_requests() -> None:
    assert sign_test(60_000, 40_000) < 1e-80
    assert sign_test(50_000, 50_000) == pytest.approx(1.0)
