"""Time as every DateTime column holds it: naive UTC. Code that needs "now" takes a Clock
(utcnow by default), so a test can hand it a fixed or a manual one instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import overload

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Naive UTC: what every DateTime column holds, on SQLite and PostgreSQL alike."""
    return datetime.now(UTC).replace(tzinfo=None)


@overload
def iso_z(value: datetime) -> str: ...
@overload
def iso_z(value: None) -> None: ...
@overload
def iso_z(value: datetime | None) -> str | None: ...
def iso_z(value: datetime | None) -> str | None:
    """A naive-UTC datetime as ISO 8601 with a Z, for JSON."""
    return None if value is None else value.isoformat() + "Z"
