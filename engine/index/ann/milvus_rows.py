"""What a row of a version's collection holds, in a layout every Milvus takes (2.3 and up).

Milvus 2.3 has no nullable fields and refuses a JSON array at the top of a JSON field, so a
row stores a missing category as "", its tags as {"v": [...]} and missing attributes as {}.
Collections that recsearch made before this layout (nullable category, tags as an array;
Milvus 2.5 and Lite only) keep serving: their layout is read from the collection's schema,
and rows written to them, and filters over them, follow it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LAYOUT = 2
FIELDS = ["id", "vector", "category", "tags", "attributes", "written_at"]


def layout_of(milvus: Any, collection: str) -> int:
    """The layout of a collection (or of the collection an alias names): layout 1 made its
    category nullable, which no later layout does (and Milvus 2.3 could not serve)."""
    for field in milvus.describe_collection(collection).get("fields", []):
        if field.get("name") == "category":
            return 1 if field.get("nullable") else LAYOUT
    return LAYOUT


def tags_path(layout: int) -> str:
    """Where an expression finds a row's tags: the JSON array inside the field (layout 2) or
    the field itself (layout 1)."""
    return 'tags["v"]' if layout >= 2 else "tags"


def records(
    ids: Sequence[str],
    vectors: np.ndarray,
    categories: Sequence[str | None],
    tags: Sequence[Sequence[str]] | None,
    attributes: Sequence[Mapping[str, Any]] | None,
    *,
    written_at: int,
    layout: int = LAYOUT,
) -> list[dict[str, Any]]:
    """Rows to insert or upsert, one per id, row-aligned with the other arguments."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return [
        in_layout(
            {
                "id": item_id,
                "vector": vectors[i].tolist(),
                "category": categories[i],
                "tags": None if tags is None else list(tags[i]),
                "attributes": None if attributes is None else dict(attributes[i]),
                "written_at": written_at,
            },
            layout,
        )
        for i, item_id in enumerate(ids)
    ]


def in_layout(row: Mapping[str, Any], layout: int) -> dict[str, Any]:
    """A row (plain, or as read from a collection of either layout) in the given layout."""
    out = {f: row[f] for f in FIELDS}
    tags = out["tags"]
    if isinstance(tags, Mapping):
        tags = tags.get("v")
    tags = list(tags or [])
    if layout >= 2:
        out["category"] = out["category"] or ""
        out["tags"] = {"v": tags}
        out["attributes"] = dict(out["attributes"] or {})
    else:
        out["category"] = out["category"] or None
        out["tags"] = tags or None
    return out
