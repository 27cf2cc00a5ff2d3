"""What a search returns and ranks on for one item: held by the index version and the delta,
so serving never reads it from SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ItemFields:
    """What a search returns and ranks on for one item, held by the index version (and by the
    delta for items written since), so serving never reads them from SQL."""

    title: str
    category: str | None
    tags: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)  # shared: copy before changing
    created_at: datetime | None = None

    @classmethod
    def from_columns(
        cls,
        title: str,
        category: str | None,
        tags: Any,
        attributes: Any,
        created_at: datetime | None,
    ) -> ItemFields:
        return cls(title, category, tuple(tags or ()), dict(attributes or {}), created_at)
