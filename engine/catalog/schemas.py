"""The catalog's bodies in the public contract: a batch of items in; an item and a write's
counts out."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from engine.catalog.items import ItemIn
from engine.core.clock import iso_z
from engine.store.models import Item


class ItemsBody(BaseModel):
    """A batch of items; POST /v1/items also takes one item or a bare array of them."""

    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1)


class ItemOut(BaseModel):
    """An item as stored, with when it was created and last written."""

    id: str
    title: str
    text: str | None
    category: str | None
    tags: list[str]
    attributes: dict[str, bool | int | float | str]
    created_at: str | None
    updated_at: str | None

    @classmethod
    def of(cls, row: Item) -> ItemOut:
        return cls(
            id=row.id,
            title=row.title,
            text=row.text,
            category=row.category,
            tags=list(row.tags or []),
            attributes=dict(row.attributes or {}),  # type: ignore[arg-type]  # as validated
            created_at=iso_z(row.created_at),
            updated_at=iso_z(row.updated_at),
        )


class ItemsWritten(BaseModel):
    inserted: int
    updated: int
    unchanged: int
    ids: list[str]
    note: str


class ItemDeleted(BaseModel):
    deleted: str
