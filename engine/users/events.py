"""The event contract: validate user actions (views, clicks, purchases, ratings, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from engine.core.contract import (
    Id,
    OptionalId,
    RequestId,
    fail,
    finite_number,
    iso_or_unix,
    numeric_id,
    validate,
)
from engine.core.errors import InvalidInput, Problem, TooLarge

EVENT_TYPES = ("impression", "view", "click", "cart", "purchase", "rating")
EventType = Literal["impression", "view", "click", "cart", "purchase", "rating"]
DEFAULT_MAX_CLOCK_SKEW_S = 300.0
# Ratings weigh (value − neutral)·scale in decayed sums: unbounded ones would overflow them.
MAX_RATING = 100.0
MAX_EVENT_VALUE = 1e9


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


def _event_type(value: object) -> object:
    if value is None:
        raise fail(f"is required: one of {', '.join(EVENT_TYPES)}", "missing")
    if value not in EVENT_TYPES:
        raise fail(
            f"unknown event type {value!r}; expected one of {', '.join(EVENT_TYPES)}", "literal"
        )
    return value


def _value(value: object) -> float | None:
    return None if value is None or value == "" else finite_number(value)


def _ts(value: object) -> datetime | None:
    return None if value is None or value == "" else iso_or_unix(value)


def _blank_is_none(value: object) -> object:
    return None if value == "" else numeric_id(value)


class EventBody(BaseModel):
    """One event as clients send it. `ts` is ISO 8601 or Unix seconds (default: now); more
    than RECSEARCH_MAX_CLOCK_SKEW_S in the future is refused."""

    model_config = ConfigDict(extra="forbid")

    user_id: Annotated[Id, BeforeValidator(numeric_id)]
    item_id: Annotated[Id, BeforeValidator(numeric_id)]
    type: Annotated[EventType, BeforeValidator(_event_type)]
    value: Annotated[float | None, BeforeValidator(_value)] = Field(
        default=None,
        validate_default=True,
        description="required for a rating: the stars, e.g. 4.5 (within ±100)",
        json_schema_extra={"minimum": -MAX_RATING, "maximum": MAX_RATING},
    )
    ts: Annotated[datetime | None, BeforeValidator(_ts)] = Field(
        default=None,
        description="ISO 8601 or Unix seconds; default now",
        json_schema_extra={"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]},
    )
    event_id: Annotated[OptionalId, BeforeValidator(_blank_is_none)] = Field(
        default=None, description="the client's id: a repeated event_id is counted once"
    )
    request_id: Annotated[RequestId, BeforeValidator(_blank_is_none)] = Field(
        default=None, description="the search response's request_id this event follows"
    )

    @field_validator("value")
    @classmethod
    def _value_in_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        is_rating = info.data.get("type") == "rating"
        if value is None and is_rating:
            raise fail("is required for a rating (the stars, e.g. 4.5)")
        limit = MAX_RATING if is_rating else MAX_EVENT_VALUE
        if value is not None and abs(value) > limit:
            what = "a rating" if is_rating else "an event value"
            raise fail(f"is {value:g}; {what} must lie within ±{limit:g}")
        return value

    @field_validator("ts")
    @classmethod
    def _not_in_future(cls, ts: datetime | None, info: ValidationInfo) -> datetime | None:
        context = info.context or {}
        now: datetime | None = context.get("now")
        skew_s = float(context.get("max_skew_s", DEFAULT_MAX_CLOCK_SKEW_S))
        if ts is not None and now is not None and ts > now + timedelta(seconds=skew_s):
            raise fail(
                f"{ts.isoformat()}Z is more than {skew_s:g} s in the future "
                "(RECSEARCH_MAX_CLOCK_SKEW_S); send the time the event happened, in UTC"
            )
        return ts

    def to_event(self, now: datetime) -> EventIn:
        ts = self.ts if self.ts is not None else now
        return EventIn(
            self.user_id, self.item_id, self.type, ts, self.value, self.event_id, self.request_id
        )


EVENT_FIELDS = tuple(EventBody.model_fields)


def validate_event(
    raw: object,
    *,
    now: datetime,
    max_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    line: int | None = None,
    source: str | None = None,
    prefix: str = "",
) -> EventIn:
    """Check one raw event; raise InvalidInput naming every bad field. Items are not looked
    up here (record_events does, for a whole batch at once)."""
    body = validate(
        EventBody,
        raw,
        context={"now": now, "max_skew_s": max_skew_s},
        line=line,
        source=source,
        prefix=prefix,
    )
    return body.to_event(now)


def parse_events_payload(
    payload: object,
    max_events: int,
    now: datetime,
    max_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
) -> list[EventIn]:
    """One event or {"events": [...]} from a request body; all or nothing."""
    is_batch = isinstance(payload, Mapping) and "events" in payload
    if is_batch:
        assert isinstance(payload, Mapping)
        extra = sorted(set(payload) - {"events"})
        if extra:
            raise InvalidInput(
                f"unknown field(s) next to events: {', '.join(map(str, extra))}",
                [Problem(str(name), "unknown field next to events") for name in extra],
            )
        rows = payload["events"]
        if not isinstance(rows, list):
            raise InvalidInput(
                "events must be an array of event objects",
                [Problem("events", "must be an array of event objects")],
            )
    else:
        rows = [payload]
    if not rows:
        raise InvalidInput("no events in the request body", [Problem("events", "is empty")])
    if len(rows) > max_events:
        raise TooLarge(f"{len(rows)} events in one request; the limit is {max_events}")
    events: list[EventIn] = []
    problems: list[Problem] = []
    for i, raw in enumerate(rows):
        try:
            events.append(
                validate_event(
                    raw, now=now, max_skew_s=max_skew_s, prefix=f"events[{i}]" if is_batch else ""
                )
            )
        except InvalidInput as exc:
            problems.extend(exc.problems)
    if problems:
        raise InvalidInput("; ".join(str(p) for p in problems[:20]), problems)
    return events
