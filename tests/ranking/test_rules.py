"""Merchandising rules on a ranked list: each action, query and time scoping, explanations,
and no rules = the ranker's order."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.catalog.fields import ItemFields
from engine.catalog.filters import Filters, Schema, parse
from engine.ranking.rules import Rule, apply, live_rules, normalize_query, pinned_ids, place_pins

IDS = ["a", "b", "c", "d", "e"]
ITEMS = [
    ItemFields("A", "city", ("food",), {"country": "France"}),
    ItemFields("B", "city", ("beach",), {"country": "Spain"}),
    ItemFields("C", "island", ("beach",), {"country": "Greece"}),
    ItemFields("D", "city", (), {"country": "France"}),
    ItemFields("E", "park", (), {"country": "Chile"}),
]
LOGITS = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
SCHEMA = Schema.from_items(ITEMS)
NOW = datetime(2026, 11, 29, 12, 0)


def final(rules: list[Rule]) -> list[str]:
    applied = apply(rules, IDS, ITEMS, LOGITS)
    return [IDS[i] for i in place_pins(applied.order, applied.pins)]


def test_no_rules_is_the_rankers_order() -> None:
    assert final([]) == IDS


def test_boost_and_bury_move_the_odds_by_the_weight() -> None:
    boosted = apply([Rule(1, "boost", item_id="e", weight=math.e**5)], IDS, ITEMS, LOGITS)
    assert [IDS[i] for i in boosted.order][:2] == ["e", "a"]  # 1 + 5 = 6 > 5
    assert boosted.effects[4][0]["logit_change"] == 5.0
    assert boosted.logits[4] == 6.0
    buried = final([Rule(2, "bury", item_id="a", weight=math.e**2.5)])
    assert buried == ["b", "c", "a", "d", "e"]  # 5 - 2.5 = 2.5, between c (3) and d (2)


def test_hide_by_filters_and_pin() -> None:
    where = parse({"country": "France"}, SCHEMA)
    assert final([Rule(1, "hide", where=where, where_raw={"country": "France"})]) == ["b", "c", "e"]
    assert final([Rule(1, "pin", item_id="e", position=1)]) == ["e", "a", "b", "c", "d"]
    assert final([Rule(1, "pin", item_id="a", position=3)]) == ["b", "c", "a", "d", "e"]
    assert final([Rule(1, "pin", item_id="a", position=99)]) == ["b", "c", "d", "e", "a"]
    # a pin does not bring back a hidden item; two pins on one slot: the older rule wins
    assert "a" not in final([Rule(1, "hide", item_id="a"), Rule(2, "pin", item_id="a", position=1)])
    two = final([Rule(1, "pin", item_id="e", position=1), Rule(2, "pin", item_id="d", position=1)])
    assert two[0] == "e"


def test_every_rule_that_changed_an_item_is_explained() -> None:
    rules = [
        Rule(1, "boost", where=parse({"tags": "beach"}, SCHEMA), where_raw={"tags": "beach"}),
        Rule(2, "pin", item_id="c", position=1),
    ]
    applied = apply(rules, IDS, ITEMS, LOGITS)
    assert [e["rule_id"] for e in applied.effects[2]] == [1, 2]
    assert [e["rule_id"] for e in applied.effects[1]] == [1]
    assert 0 not in applied.effects


def test_query_and_time_window_scope_a_rule() -> None:
    rules = [
        Rule(1, "hide", item_id="a", query=normalize_query("  Beach   HOLIDAYS ")),
        Rule(2, "hide", item_id="b", starts_at=NOW + timedelta(hours=1)),
        Rule(3, "hide", item_id="c", ends_at=NOW),
        Rule(4, "pin", item_id="d", position=1, starts_at=NOW - timedelta(days=1)),
    ]
    assert [r.id for r in live_rules(rules, NOW, "beach holidays")] == [1, 4]
    assert [r.id for r in live_rules(rules, NOW, "beaches")] == [4]
    assert [r.id for r in live_rules(rules, NOW, None)] == [4]
    assert pinned_ids(live_rules(rules, NOW, None)) == ["d"]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["pin", "boost", "bury", "hide"]),
            st.sampled_from(IDS),
            st.integers(1, 6),
            st.floats(0.1, 10),
        ),
        max_size=6,
    )
)
def test_the_result_is_a_permutation_of_what_was_not_hidden(
    specs: list[tuple[str, str, int, float]],
) -> None:
    rules = [
        Rule(n, action, item_id=item, position=pos, weight=w)  # type: ignore[arg-type]
        for n, (action, item, pos, w) in enumerate(specs)
    ]
    hidden = {item for action, item, _, _ in specs if action == "hide"}
    out = final(rules)
    assert sorted(out) == sorted(set(IDS) - hidden)
    assert Filters().matches(ITEMS[0])
