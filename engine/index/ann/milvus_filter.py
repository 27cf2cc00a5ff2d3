"""Milvus filter expressions built from values that are always quoted, never formatted in raw.

Strings are double-quoted with JSON's escaping (\\ and \" and control characters), which
Milvus's expression parser reads; attribute names are quoted the same way inside
attributes["..."], so no item field or request value can change an expression's structure.
Category and id are columns; tags and attributes are JSON fields (tags at tags["v"]: Milvus
2.3 takes no array at the top of a JSON field; engine.index.ann.milvus_rows).

for_filters turns a search request's filters into one expression, so a selective filter is
answered inside Milvus rather than by fetching ever more neighbours and dropping them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.catalog.filters import Condition, Filters

_COLUMNS = ("id", "category")
TAGS = 'tags["v"]'


def quote(value: str | float | bool) -> str:
    """A value as a Milvus expression literal: strings double-quoted with \\ and " escaped
    (JSON's escaping, which Milvus's parser reads); numbers and booleans as themselves."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot be compared in a filter")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot quote a {type(value).__name__} into a filter")


def _field(name: str) -> str:
    """A column, or attributes["name"] for anything else (the name quoted like a value)."""
    if name in _COLUMNS:
        return name
    return f"attributes[{quote(name)}]"


def equals(field: str, value: str | float | bool, *, tags: str = TAGS) -> str:
    """field == value; tags: the item's tags (at the path `tags`) contain value."""
    if field == "tags":
        return f"json_contains({tags}, {quote(value)})"
    return f"{_field(field)} == {quote(value)}"


def one_of(field: str, values: Iterable[str | float | bool], *, tags: str = TAGS) -> str:
    """field is one of values; tags: the item's tags contain any of them. A column takes
    `in`; an attribute is a JSON path, which `in` does not take everywhere (Milvus Lite),
    so it gets equalities joined by or."""
    listed = [quote(v) for v in values]
    if field == "tags":
        return f"json_contains_any({tags}, [{', '.join(listed)}])"
    if field in _COLUMNS:
        return f"{field} in [{', '.join(listed)}]"
    if not listed:
        raise ValueError(f"one_of({field!r}) needs at least one value")
    return " or ".join(f"{_field(field)} == {v}" for v in listed)


def between(
    field: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> str:
    """A numeric range on an attribute (or always-true "" when both bounds are open)."""
    parts = []
    if low is not None:
        parts.append(f"{_field(field)} {'>=' if low_inclusive else '>'} {quote(float(low))}")
    if high is not None:
        parts.append(f"{_field(field)} {'<=' if high_inclusive else '<'} {quote(float(high))}")
    return " and ".join(parts)


def all_of(expressions: Iterable[str]) -> str:
    """AND of expressions, each parenthesized; empty ones are dropped."""
    kept = [e for e in expressions if e]
    return " and ".join(f"({e})" for e in kept)


def for_filters(filters: Filters, *, tags: str = TAGS) -> str:
    """One expression for a request's filters (AND of their conditions), or "" for none.

    It lets in every row the filters match, and may let in a few more (an attribute that is
    a list where the catalog holds numbers, say): the search checks every candidate against
    the filters in Python as well, so an expression must never be narrower, only as narrow.
    """
    return all_of(_condition(c, tags) for c in filters.conditions)


def _condition(c: Condition, tags: str) -> str:
    if c.op == "range":
        return between(
            c.field,
            None if math.isinf(c.low) else c.low,
            None if math.isinf(c.high) else c.high,
            low_inclusive=c.low_inclusive,
            high_inclusive=c.high_inclusive,
        )
    if c.field == "tags":
        if c.op == "all":
            return f"json_contains_all({tags}, [{', '.join(quote(v) for v in c.values)}])"
        return one_of("tags", c.values, tags=tags)
    if c.field in _COLUMNS:
        return one_of(c.field, c.values)
    # An attribute holds a value or a list of values: equal to one, or a list holding it
    # (for "all", each value; an attribute that is one value matches as if "any").
    path = _field(c.field)
    either = [f"{path} == {quote(v)} or json_contains({path}, {quote(v)})" for v in c.values]
    if c.op == "all":
        listed = ", ".join(quote(v) for v in c.values)
        return f"json_contains_all({path}, [{listed}]) or " + " or ".join(
            f"{path} == {quote(v)}" for v in c.values
        )
    return " or ".join(either)
