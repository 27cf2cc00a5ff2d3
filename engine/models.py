"""SQL tables as typed SQLAlchemy 2.0 models: columns and relationships only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Item(Base):
    """A catalog item; SQL is the source of truth, indexes are derived from it."""

    __tablename__ = "items"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(200), index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    attributes: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    # sha256 of the item's canonical JSON: an upsert with the same hash changes nothing.
    content_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class IndexVersion(Base):
    """One published index artifact; the CURRENT file on disk says which one serves."""

    __tablename__ = "index_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    item_count: Mapped[int] = mapped_column(Integer)
    index_type: Mapped[str] = mapped_column(String(200))
    recall_at_10: Mapped[float | None] = mapped_column(Float)
    build_seconds: Mapped[float] = mapped_column(Float)
    path: Mapped[str] = mapped_column(Text)
