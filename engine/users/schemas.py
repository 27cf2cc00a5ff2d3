"""The users' bodies in the public contract: a batch of events in, what was recorded and a
user's profile out."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from engine.users.events import EventBody


class EventsBody(BaseModel):
    """A batch of events; POST /v1/events also takes one event object."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventBody] = Field(min_length=1)


class EventsRecorded(BaseModel):
    received: int
    recorded: int
    duplicates: int
    users: int


class Affinity(BaseModel):
    name: str
    affinity: float


class RecentItem(BaseModel):
    item_id: str
    type: str
    ts: str


class UserProfile(BaseModel):
    user_id: str
    event_count: int
    counts: dict[str, int]
    first_activity: str | None
    last_activity: str | None
    top_categories: list[Affinity]
    top_tags: list[Affinity]
    recent_items: list[RecentItem]
    purchased: list[str]
    has_vector: bool
    decayed_to: str | None
    half_life_days: float


class EventOut(BaseModel):
    type: str
    item_id: str
    ts: str
    value: float | None
    request_id: str | None
