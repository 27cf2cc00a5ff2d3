"""The event contract: validate user actions (views, clicks, purchases, ratings, ...)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.errors import InvalidInput, Problem, TooLarge

EVENT_TYPES = ("impression", "view", "click", "cart", "purchase", "rating")
EVENT_FIELDS = ("user_id", "item_id", "type", "value", "ts", "event_id", "request_id")
MAX_ID_CHARS = 256
# Unix seconds before this are almost surely milliseconds or a bug (1990-01-01).
_MIN_UNIX_S = 631_152_000


@dataclass(frozen=True)
class EventIn:
    """A validated event; ts is naive UTC."""

    user_id: str
    item_id: str
    type: str
    ts: datetime
    value: float | None = None
    event_id: str | None = None
    request_id: str | None = None


def validate_event(
    raw: object, *, now: datetime, line: int | None = None, source: str | None = None
) -> EventIn:
    """Check one raw event; raise InvalidInput naming every bad field. Items are not looked
    up here (record_events does, for a whole batch at once)."""
    problems: list[Problem] = []

    def bad(field: str, message: str) -> None:
        problems.append(Problem(field, message, line=line, source=source))

    if not isinstance(raw, Mapping):
        bad("(row)", f"expected a JSON object, got {type(raw).__name__}")
        raise InvalidInput(str(problems[0]), problems)
    for key in raw:
        if key not in EVENT_FIELDS:
            bad(str(key), f"unknown field; allowed fields are {', '.join(EVENT_FIELDS)}")

    def ident(name: str, required: bool) -> str | None:
        value = raw.get(name)
        if value is None or value == "":
            if required:
                bad(name, "is required")
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # numeric ids (e.g. MovieLens userId) are ids too
        if not isinstance(value, str):
            bad(name, f"must be a string, got {value!r}")
            return None
        value = value.strip()
        if not value or len(value) > MAX_ID_CHARS:
            bad(name, f"must be 1..{MAX_ID_CHARS} characters, got {value!r}")
            return None
        return value

    user_id = ident("user_id", True)
    item_id = ident("item_id", True)
    event_id = ident("event_id", False)
    request_id = ident("request_id", False)

    kind = raw.get("type")
    if kind is None:
        bad("type", f"is required: one of {', '.join(EVENT_TYPES)}")
    elif kind not in EVENT_TYPES:
        bad("type", f"unknown event type {kind!r}; expected one of {', '.join(EVENT_TYPES)}")

    value = raw.get("value")
    number: float | None = None
    if value is not None and value != "":
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
        except (TypeError, ValueError):
            bad("value", f"must be a finite number, got {value!r}")
    if kind == "rating" and number is None and not any(p.field == "value" for p in problems):
        bad("value", "is required for a rating (the stars, e.g. 4.5)")

    ts = parse_ts(raw.get("ts"), now, bad)
    if problems:
        raise InvalidInput("; ".join(str(p) for p in problems), problems)
    assert user_id is not None and item_id is not None and isinstance(kind, str)
    return EventIn(user_id, item_id, kind, ts, number, event_id, request_id)


def parse_ts(value: Any, now: datetime, bad: Any) -> datetime:
    """ISO 8601 or Unix seconds → naive UTC; missing means now."""
    if value is None or value == "":
        return now
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                bad("ts", f"is neither ISO 8601 nor Unix seconds: {value!r}")
                return now
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(UTC).replace(tzinfo=None)
            return parsed
    else:
        bad("ts", f"must be an ISO 8601 string or Unix seconds, got {value!r}")
        return now
    if not math.isfinite(seconds) or not _MIN_UNIX_S <= seconds < 10_000_000_000:
        bad("ts", f"Unix seconds out of range (milliseconds?): {value!r}")
        return now
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def parse_events_payload(payload: object, max_events: int, now: datetime) -> list[EventIn]:
    """One event or {"events": [...]} from a request body; all or nothing."""
    is_batch = isinstance(payload, Mapping) and "events" in payload
    if is_batch:
        assert isinstance(payload, Mapping)
        extra = sorted(set(payload) - {"events"})
        if extra:
            raise InvalidInput(f"unknown field(s) next to events: {', '.join(extra)}")
        rows = payload["events"]
        if not isinstance(rows, list):
            raise InvalidInput("events must be an array of event objects")
    else:
        rows = [payload]
    if not rows:
        raise InvalidInput("no events in the request body")
    if len(rows) > max_events:
        raise TooLarge(f"{len(rows)} events in one request; the limit is {max_events}")
    events: list[EventIn] = []
    problems: list[Problem] = []
    for i, raw in enumerate(rows):
        try:
            events.append(validate_event(raw, now=now))
        except InvalidInput as exc:
            prefix = f"events[{i}]." if is_batch else ""
            problems.extend(Problem(prefix + p.field, p.message) for p in exc.problems)
    if problems:
        raise InvalidInput("; ".join(str(p) for p in problems[:20]), problems)
    return events
