"""Time as every DateTime column holds it: naive UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Naive UTC: what every DateTime column holds, on SQLite and PostgreSQL alike."""
    return datetime.now(UTC).replace(tzinfo=None)


def iso_z(value: datetime | None) -> str | None:
    """A naive-UTC datetime as ISO 8601 with a Z, for JSON."""
    return None if value is None else value.isoformat() + "Z"
