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

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from engine.catalog.facets import Counts
from engine.catalog.filters import Filters
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
    fresh = corpus.delta.items if corpus.delta is not None else {}
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
    row_of = artifact.row_of
    gone = [r for ids in (exclude, fresh, *deleted) for i in ids if (r := row_of(i)) is not None]
    if gone:
        mask[np.asarray(gone, dtype=np.int64)] = False
    added = [
        f
        for i, f in fresh.items()
        if i not in exclude
        and (category is None or f.category == category)
        and (not where or where.matches(f))
        and not any(i in ids for ids in deleted)
    ]
    total = int(mask.sum()) + len(added)
    columns = artifact.facet_columns() if facets or max_per_category else None
    schema = artifact.filter_schema(fresh) if columns is not None else None
    counts = None
    if facets:
        assert columns is not None and schema is not None
        counts = columns.count(facets, mask, schema, added)
    if max_per_category is not None:
        assert columns is not None and schema is not None
        per = columns.count(["category"], mask, schema, added, None).facets["category"]
        capped = sum(min(n, max_per_category) for n in per.values())
        total -= sum(per.values()) - capped
    if ranked and total > MAX_DEPTH:
        return Selected(MAX_DEPTH, "gte", counts)
    return Selected(total, "eq", counts)
