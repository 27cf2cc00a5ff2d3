"""The catalog contract: what validate_item accepts, normalizes and rejects."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.catalog.items import ItemIn, parse_items_payload, validate_item
from engine.core.errors import InvalidInput, TooLarge


def test_minimal_item_is_normalized() -> None:
    item = validate_item(
        {"id": " a1 ", "title": " Paris ", "tags": ["x", "x ", "y"], "category": ""}
    )
    assert item == ItemIn(id="a1", title="Paris", tags=("x", "y"))


def test_full_item() -> None:
    item = validate_item(
        {
            "id": "p",
            "title": "Paris",
            "text": "Museums.",
            "category": "city",
            "tags": ["art"],
            "attributes": {"cost": 180, "eu": True, "country": "France", "rating": 4.5},
            "created_at": "2024-05-01T12:00:00+02:00",
        }
    )
    assert item.attributes == {"cost": 180, "eu": True, "country": "France", "rating": 4.5}
    assert item.created_at is not None and item.created_at.isoformat() == "2024-05-01T10:00:00"


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"title": "x"}, "id", "required"),
        ({"id": "a"}, "title", "required"),
        ({"id": 5, "title": "x"}, "id", "must be a string"),
        ({"id": "a", "title": "   "}, "title", "must not be empty"),
        ({"id": "a", "title": "x", "tags": "beach"}, "tags", "array"),
        ({"id": "a", "title": "x", "tags": ["ok", 3]}, "tags[1]", "non-empty string"),
        ({"id": "a", "title": "x", "attributes": []}, "attributes", "object"),
        ({"id": "a", "title": "x", "attributes": {"n": None}}, "attributes.n", "number, string"),
        (
            {"id": "a", "title": "x", "attributes": {"n": {"a": 1}}},
            "attributes.n",
            "number, string",
        ),
        ({"id": "a", "title": "x", "created_at": "yesterday"}, "created_at", "ISO 8601"),
        ({"id": "a", "title": "x", "titel": "typo"}, "titel", "unknown field"),
        ({"id": "a", "title": "x" * 1001}, "title", "limit is 1000"),
        ({"id": "a\nb", "title": "x"}, "id", "control characters"),
    ],
)
def test_bad_fields_are_named(raw: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_item(raw, line=7, source="cat.jsonl")
    problems = info.value.problems
    assert [p.field for p in problems] == [field]
    assert fragment in problems[0].message
    assert str(problems[0]).startswith(f"cat.jsonl:7: {field}: ")


def test_every_problem_of_a_row_is_reported() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_item({"tags": 1, "attributes": 2})
    assert {p.field for p in info.value.problems} == {"id", "title", "tags", "attributes"}


def test_not_an_object() -> None:
    with pytest.raises(InvalidInput, match="expected a JSON object, got array"):
        validate_item([1, 2])


def test_payload_forms_and_limits() -> None:
    one = {"id": "a", "title": "A"}
    assert [i.id for i in parse_items_payload(one, 10)] == ["a"]
    assert [i.id for i in parse_items_payload([one, {"id": "b", "title": "B"}], 10)] == ["a", "b"]
    assert [i.id for i in parse_items_payload({"items": [one]}, 10)] == ["a"]
    with pytest.raises(TooLarge, match="3 items"):
        parse_items_payload([one, one, one], 2)
    with pytest.raises(InvalidInput) as info:
        parse_items_payload([one, {"id": "b"}, one], 10)
    assert [p.field for p in info.value.problems] == ["items[1].title", "items[2].id"]
    with pytest.raises(InvalidInput, match="no items"):
        parse_items_payload([], 10)


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=30)
_word = _text.map(str.strip).filter(bool)
_scalar = st.one_of(
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=False, allow_infinity=False),
    _word,
)


@given(
    item_id=_word,
    title=_word,
    text=st.none() | _word,
    category=st.none() | _word,
    tags=st.lists(_word, max_size=5),
    attributes=st.dictionaries(_word, _scalar, max_size=5),
)
def test_validated_item_round_trips(
    item_id: str,
    title: str,
    text: str | None,
    category: str | None,
    tags: list[str],
    attributes: dict[str, object],
) -> None:
    raw = {"id": item_id, "title": title, "text": text, "category": category, "tags": tags}
    raw["attributes"] = attributes
    item = validate_item(raw)
    again = validate_item(item.to_dict())
    assert again == item
    assert again.content_hash() == item.content_hash()
