"""Filters: parsed against the catalog's schema, errors naming the field, and the columnar
rows equal to a per-item predicate (the oracle) on the sample catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.catalog.fields import ItemFields
from engine.catalog.filters import Columns, Schema, parse
from engine.core.errors import InvalidInput

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "catalog.jsonl"


def _items() -> list[ItemFields]:
    out = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        out.append(
            ItemFields.from_columns(
                d["title"], d.get("category"), d.get("tags"), d.get("attributes"), None
            )
        )
    return out


ITEMS = _items()
SCHEMA = Schema.from_items(ITEMS)
COLUMNS = Columns(ITEMS)
COUNTRIES = sorted({i.attributes["country"] for i in ITEMS})[:12] + ["Atlantis"]
TAGS = sorted({t for i in ITEMS for t in i.tags})[:15] + ["no-such-tag"]
CATEGORIES = sorted({i.category for i in ITEMS if i.category})

_condition = st.one_of(
    st.tuples(st.just("country"), st.sampled_from(COUNTRIES)),
    st.tuples(
        st.just("country"),
        st.builds(lambda v: {"in": v}, st.lists(st.sampled_from(COUNTRIES), min_size=1)),
    ),
    st.tuples(
        st.just("continent"),
        st.builds(
            lambda v: {"in": v},
            st.lists(
                st.sampled_from(["Asia", "Europe", "Africa", "Oceania", "Nowhere"]), min_size=1
            ),
        ),
    ),
    st.tuples(st.just("family_friendly"), st.booleans()),
    st.tuples(st.just("category"), st.sampled_from(CATEGORIES)),
    st.tuples(st.just("tags"), st.sampled_from(TAGS)),
    st.tuples(
        st.just("tags"),
        st.builds(
            lambda op, v: {op: v},
            st.sampled_from(["any", "all"]),
            st.lists(st.sampled_from(TAGS), min_size=1, max_size=3),
        ),
    ),
    st.tuples(
        st.just("avg_daily_cost_usd"),
        st.builds(
            lambda lo, hi, lo_op, hi_op: {lo_op: lo, hi_op: lo + hi},
            st.integers(0, 300),
            st.integers(0, 300),
            st.sampled_from(["gt", "gte"]),
            st.sampled_from(["lt", "lte"]),
        ),
    ),
    st.tuples(st.just("lat"), st.builds(lambda v: {"gte": v}, st.floats(-90, 90))),
    st.tuples(st.just("avg_daily_cost_usd"), st.integers(0, 400)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_condition, min_size=1, max_size=3, unique_by=lambda c: c[0]))
def test_columns_equal_the_per_item_predicate(conditions: list[tuple[str, Any]]) -> None:
    filters = parse(dict(conditions), SCHEMA)
    expected = np.array([r for r, item in enumerate(ITEMS) if filters.matches(item)], np.int64)
    np.testing.assert_array_equal(COLUMNS.rows(filters), expected)


def test_the_issue_examples() -> None:
    japan = COLUMNS.rows(parse({"country": "Japan"}, SCHEMA))
    assert len(japan) > 0 and all(ITEMS[r].attributes["country"] == "Japan" for r in japan)
    mid = COLUMNS.rows(parse({"avg_daily_cost_usd": {"gte": 50, "lte": 100}}, SCHEMA))
    assert len(mid) > 0
    assert all(50 <= ITEMS[r].attributes["avg_daily_cost_usd"] <= 100 for r in mid)
    both = COLUMNS.rows(
        parse({"continent": {"in": ["Asia", "Europe"]}, "family_friendly": True}, SCHEMA)
    )
    assert all(ITEMS[r].attributes["continent"] in ("Asia", "Europe") for r in both)
    assert all(ITEMS[r].attributes["family_friendly"] is True for r in both)
    beach = COLUMNS.rows(parse({"tags": {"all": ["beach", "food"]}}, SCHEMA))
    assert all({"beach", "food"} <= set(ITEMS[r].tags) for r in beach)
    assert parse({"country": "Japan"}, SCHEMA).key() == parse({"country": "Japan"}, SCHEMA).key()


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"colour": "red"}, "filters.colour", "unknown field 'colour'"),
        ({"country": 5}, "filters.country", "holds text, got 5"),
        ({"avg_daily_cost_usd": "cheap"}, "filters.avg_daily_cost_usd", "holds numbers"),
        ({"family_friendly": 1}, "filters.family_friendly", "holds booleans, got 1"),
        ({"country": {"gte": 3}}, "filters.country", "a range needs numbers"),
        (
            {"avg_daily_cost_usd": {"gte": 100, "lte": 50}},
            "filters.avg_daily_cost_usd",
            "above the upper bound",
        ),
        (
            {"avg_daily_cost_usd": {"gt": 1, "gte": 2}},
            "filters.avg_daily_cost_usd",
            "at most one lower bound",
        ),
        ({"continent": ["Asia"]}, "filters.continent", '{"in": [...]}'),
        ({"tags": ["beach"]}, "filters.tags", '{"any": [...]}'),
        ({"continent": {"in": []}}, "filters.continent", "non-empty list"),
        ({"continent": {"near": "Asia"}}, "filters.continent", "unknown operator 'near'"),
        ({"continent": {"any": ["Asia"]}}, "filters.continent", "use in for"),
        ({"tags": {"in": ["beach"]}}, "filters.tags", "use any or all"),
        ({"continent": {}}, "filters.continent", "an empty condition"),
        ({"continent": {"in": ["Asia"], "gte": 1}}, "filters.continent", "one operator per field"),
        ({"lat": {"gte": float("inf")}}, "filters.lat", "finite number"),
        # Integers no float holds (OverflowError once), shown cut to a readable length.
        ({"lat": {"gte": 10**400}}, "filters.lat", "gte must be a finite number, got 1000"),
        ({"lat": {"lt": -(10**400)}}, "filters.lat", "… (401 digits)"),
        ({"lat": 10**400}, "filters.lat", "value must be a finite number"),
        ({"lat": {"in": [1, -(10**400)]}}, "filters.lat", "value must be a finite number"),
        ({"tags": {"any": [10**400]}}, "filters.tags", "value must be a finite number"),
        ({"country": 10**400}, "filters.country", "holds text, got 10000000000000000000…"),
        ({"lat": float("-inf")}, "filters.lat", "value must be a finite number, got -Infinity"),
        ({"continent": {"in": "x" * 5_000}}, "filters.continent", "… (5,002 characters)"),
        ({"country": None}, "filters.country", "got null"),
        ([1, 2], "filters", "must be an object"),
    ],
)
def test_bad_filters_name_the_field(raw: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse(raw, SCHEMA)
    problems = caught.value.problems
    assert problems and problems[0].field == field
    assert words in problems[0].message, problems[0].message


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse({"colour": "red", "country": 5, "continent": "Asia"}, SCHEMA)
    assert [p.field for p in caught.value.problems] == ["filters.colour", "filters.country"]


def test_a_where_of_huge_numbers_matches_nothing_and_raises_nothing() -> None:
    # What Condition.matches and the columns see when an old row holds 10**400.
    huge = ItemFields.from_columns("Huge", None, [10**400], {"lat": 10**400}, None)
    columns = Columns([huge, *ITEMS[:3]])
    assert columns.rows(parse({"lat": {"gte": 0}}, SCHEMA)).tolist() == [
        r + 1 for r in COLUMNS.rows(parse({"lat": {"gte": 0}}, SCHEMA)).tolist() if r < 3
    ]
    assert not parse({"lat": 5.0}, SCHEMA).matches(huge)
    assert not parse({"tags": {"any": [5]}}, SCHEMA).matches(huge)


def test_a_long_unknown_field_is_named_cut_to_a_readable_length() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse({"c" * 5_000: 1}, SCHEMA)
    (problem,) = caught.value.problems
    assert problem.field == "filters." + "c" * 52 + "… (5,008 characters)"
    assert problem.message.startswith("unknown field '" + "c" * 59 + "… (5,002 characters);")
