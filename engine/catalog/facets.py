"""Facets: how many of a set of items carry each value of a field, and the range of a number.

A request names fields (`facets: ["category", "tags", "country"]`); the answer counts their
values over the items the search selects (engine.search.selection), the same set `total`
counts. Text, boolean and list values are counted (the most frequent MAX_VALUES per field);
numbers get their min and max (`facet_stats`). Fields come from the index version's Schema,
so an unknown field is an InvalidInput naming `facets`, like a filter's.

Counting is a bincount over per-version columns built on first use: one value code per row
for single values, (row, code) pairs for lists, a float array for numbers. At 100k items
three facets take well under a millisecond (bench/facets.py); items written since the build
(the delta's) are counted from their fields, one by one.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.catalog.fields import ItemFields
from engine.catalog.filters import Schema, field_value, kind_of
from engine.core.contract import finite_float
from engine.core.errors import InvalidInput, Problem

MAX_VALUES = 100  # per field, the most frequent (Meilisearch's maxValuesPerFacet)


def facet_name(value: Any) -> str:
    """A value as a facet key: JSON's spelling for booleans, numbers as written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check(names: Sequence[str], schema: Schema) -> None:
    """Raises InvalidInput naming every field the catalog does not hold."""
    unknown = [n for n in names if n not in schema.kinds]
    if unknown:
        known = ", ".join(schema.fields())
        problems = [
            Problem("facets", f"{n!r} is not a field of the catalog's items (known: {known})")
            for n in unknown
        ]
        raise InvalidInput("; ".join(str(p) for p in problems), problems)


@dataclass
class _Column:
    """A field's values per row: row r holds codes[starts[r]:starts[r + 1]] (CSR)."""

    values: list[str]  # code → facet key
    starts: np.ndarray  # int64, size + 1
    codes: np.ndarray  # int64
    numbers: np.ndarray  # float64 per row, NaN where the value is not a number
    everywhere: np.ndarray  # the counts over every row, per code
    single: np.ndarray | None  # the code per row (-1: none) when no row holds two

    def tally(self, rows: Rows) -> np.ndarray:
        """Counts per code over the selected rows."""
        if rows.inverted:
            return self.everywhere - self._over(rows.rows)
        return self._over(rows.rows)

    def _over(self, rows: np.ndarray) -> np.ndarray:
        if self.single is not None:  # at most one value per row: no pairs to gather
            codes = self.single[rows]
            return np.bincount(codes[codes >= 0], minlength=len(self.values))
        begin = self.starts[rows]
        lengths = self.starts[rows + 1] - begin
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(len(self.values), dtype=np.int64)
        # positions of every pair of the rows: each row's begin, then +1 within the row
        offsets = np.repeat(begin - np.cumsum(lengths) + lengths, lengths)
        positions = offsets + np.arange(total)
        return np.bincount(self.codes[positions], minlength=len(self.values))


@dataclass(frozen=True)
class Rows:
    """The selected rows, or (inverted) the rows left out when those are fewer."""

    rows: np.ndarray
    inverted: bool

    @classmethod
    def of(cls, mask: np.ndarray) -> Rows:
        if int(np.count_nonzero(mask)) * 2 <= mask.size:
            return cls(np.flatnonzero(mask), False)
        return cls(np.flatnonzero(~mask), True)


@dataclass
class Counts:
    """What the facets of one request found."""

    facets: dict[str, dict[str, int]] = field(default_factory=dict)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)


class FacetColumns:
    """One index version's items, as the counts need them (a column per field, on first use)."""

    def __init__(self, items: Sequence[ItemFields]) -> None:
        self.items = items
        self.size = len(items)
        self._columns: dict[str, _Column] = {}
        self._lock = threading.Lock()

    def count(
        self,
        names: Sequence[str],
        mask: np.ndarray,
        schema: Schema,
        fresh: Iterable[ItemFields] = (),
        most: int | None = MAX_VALUES,
    ) -> Counts:
        """Counts over the rows `mask` selects plus the `fresh` items (written since the build,
        already judged selected), the `most` frequent values per field (None: all); `names`
        must be fields of `schema` (see check)."""
        fresh = list(fresh)
        out = Counts()
        rows = Rows.of(mask)
        for name in names:
            kinds = schema.kinds.get(name, set())
            column = self._column(name)
            if kinds - {"number"} or not kinds:
                counted = self._counted(column, rows, name, fresh)
                out.facets[name] = dict(
                    sorted(counted.items(), key=lambda kv: (-kv[1], kv[0]))[:most]
                )
            if "number" in kinds:
                stats = self._stats(column, mask, name, fresh)
                if stats is not None:
                    out.stats[name] = stats
        return out

    def _counted(
        self, column: _Column, rows: Rows, name: str, fresh: list[ItemFields]
    ) -> Counter[str]:
        tally = column.tally(rows)
        counted: Counter[str] = Counter(
            {column.values[c]: int(tally[c]) for c in np.flatnonzero(tally).tolist()}
        )
        for item in fresh:
            for v in _elements(field_value(item, name)):
                if kind_of(v) not in (None, "number", "list"):
                    counted[facet_name(v)] += 1
        return counted

    def _stats(
        self, column: _Column, mask: np.ndarray, name: str, fresh: list[ItemFields]
    ) -> dict[str, float] | None:
        numbers = column.numbers[mask]
        numbers = numbers[~np.isnan(numbers)]
        ends = [float(numbers.min()), float(numbers.max())] if numbers.size else []
        ends += [x for item in fresh if (x := _number(field_value(item, name))) is not None]
        return {"min": min(ends), "max": max(ends)} if ends else None

    def _column(self, name: str) -> _Column:
        found = self._columns.get(name)
        if found is None:
            with self._lock:
                found = self._columns.get(name)
                if found is None:
                    found = self._build(name)
                    self._columns[name] = found
        return found

    def _build(self, name: str) -> _Column:
        codes: dict[str, int] = {}
        starts = np.zeros(self.size + 1, dtype=np.int64)
        pairs: list[int] = []
        numbers = np.full(self.size, np.nan)
        for row, item in enumerate(self.items):
            value = field_value(item, name)
            number = _number(value)
            if number is not None:
                numbers[row] = number
            else:
                for v in _elements(value):
                    if kind_of(v) not in (None, "number", "list"):
                        pairs.append(codes.setdefault(facet_name(v), len(codes)))
            starts[row + 1] = len(pairs)
        flat = np.asarray(pairs, dtype=np.int64)
        everywhere = np.bincount(flat, minlength=len(codes))
        lengths = np.diff(starts)
        single = None
        if not lengths.size or lengths.max() <= 1:
            single = np.full(self.size, -1, dtype=np.int64)
            single[lengths == 1] = flat
        return _Column(list(codes), starts, flat, numbers, everywhere, single)


def _elements(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return finite_float(value)
