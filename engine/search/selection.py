"""What a search selects, counted: `total`, `total_relation`, and the facets over the same set.

The selection is every item the request's category, filters and exclusions allow: the
serving version's rows that match (less the rows deleted since the build, and those whose
item was rewritten since: their fresh fields, the delta's, are judged instead), plus the
items written since the build that match. A query or a user ranks that set; it selects
nothing out of it (a dense retrieval finds every item at some depth).

    total           the selection's size, exact (`eq`) for a search that only filters
    total_relation  `gte` when a ranked search's pages stop at MAX_DEPTH before the selection
                    ends: total is then MAX_DEPTH, a lower bound of what matches
    facets          counts over the whole selection (engine.catalog.facets)

Items written within the last delta poll are not counted yet (they are searchable as soon
as the delta holds them: within a second).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from engine.catalog.facets import Counts
from engine.catalog.fields import ItemFields
from engine.catalog.filters import Filters
from engine.index.artifact import IndexArtifact
from engine.index.corpus import Corpus
from engine.search.request import MAX_DEPTH


@dataclass
class Selected:
    total: int
    relation: Literal["eq", "gte"]
    counts: Counts | None  # None without facets asked


def count(
    corpus: Corpus,
    category: str | None,
    where: Filters | None,
    exclude: Collection[str],
    deleted: Sequence[Collection[str]],
    ranked: bool,
    facets: Sequence[str] = (),
    max_per_category: int | None = None,
) -> Selected:
    """The request's selection counted; ranked: a query, user, session or item orders it
    (pages stop at MAX_DEPTH), otherwise only filters select. max_per_category: the results
    keep at most that many of each category (total counts what remains; facets do not)."""
    artifact = corpus.artifact
    delta = corpus.delta
    fresh = delta.items if delta is not None else {}
    # Rows not selected as the version holds them: excluded or deleted (gone), or judged on
    # their fresh fields (stale: the delta's, found once per snapshot; after a bulk update it
    # holds thousands, and a lookup of each per search cost more than the search).
    stale = delta.version_rows(artifact) if delta is not None else frozenset()
    counts_all = category is None and not where and not (facets or max_per_category)
    if counts_all and ranked:  # past MAX_DEPTH a ranked total is MAX_DEPTH: no need to count
        # Every id excluded or deleted takes one item at most, from the version or the delta.
        held = len(artifact.ids) - len(stale) + len(fresh)
        at_least = held - len(exclude) - sum(map(len, deleted))
        if at_least > MAX_DEPTH:
            return _selected(at_least, ranked, None)
    row_of = artifact.ann.rows.get
    gone = {r for ids in (exclude, *deleted) for i in ids if (r := row_of(i)) is not None}
    columns = artifact.facet_columns() if facets or max_per_category else None
    if counts_all:  # all rows but those gone
        total = len(artifact.ids) - len(stale) - len(gone - stale)
        total += _count_added(fresh, exclude, deleted)
        return _selected(total, ranked, None)
    mask = _rows_selected(artifact, category, where)
    mask[np.fromiter(gone | stale, dtype=np.int64)] = False
    added = [
        f
        for i, f in fresh.items()
        if i not in exclude
        and (category is None or f.category == category)
        and (not where or where.matches(f))
        and not any(i in ids for ids in deleted)
    ]
    total = int(mask.sum()) + len(added)
    counts = None
    if columns is not None:
        schema = artifact.filter_schema(fresh)
        if facets:
            counts = columns.count(facets, mask, schema, added)
        if max_per_category is not None:
            per = columns.count(["category"], mask, schema, added, None).facets["category"]
            capped = sum(min(n, max_per_category) for n in per.values())
            total -= sum(per.values()) - capped
    return _selected(total, ranked, counts)


def _selected(total: int, ranked: bool, counts: Counts | None) -> Selected:
    """A ranked search's pages stop at MAX_DEPTH: past it, total is a lower bound."""
    if ranked and total > MAX_DEPTH:
        return Selected(MAX_DEPTH, "gte", counts)
    return Selected(total, "eq", counts)


def _rows_selected(
    artifact: IndexArtifact, category: str | None, where: Filters | None
) -> np.ndarray:
    """(n_rows,) bool: the version's rows in the category and matching the filters."""
    size = len(artifact.ids)
    mask = np.zeros(size, dtype=bool)
    if category is not None:
        mask[artifact.rows_for_category(category)] = True
    else:
        mask[:] = True
    if where:
        allowed = np.zeros(size, dtype=bool)
        allowed[artifact.filter_columns().rows(where)] = True
        mask &= allowed
    return mask


def _count_added(
    fresh: Mapping[str, ItemFields], exclude: Collection[str], deleted: Sequence[Collection[str]]
) -> int:
    """How many items written since the build are neither excluded nor deleted: found from
    the few excluded and deleted ids, not from each of the delta's items."""
    dropped = {i for ids in (exclude, *deleted) for i in ids if i in fresh}
    return len(fresh) - len(dropped)
