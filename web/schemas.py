"""The bodies only the web layer returns: health, readiness, errors and the admin page's views."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
)

from engine.catalog.schemas import ItemOut
from engine.index.schemas import IndexStatus
from engine.ranking.schemas import ModelInfo
from engine.search.schemas import SearchOut
from engine.users.schemas import EventOut, UserProfile
from indexer.schemas import Job


class EmptyBody(BaseModel):
    """No fields; an empty body or {} is fine."""

    model_config = ConfigDict(extra="forbid")


class AdminStatus(BaseModel):
    index: IndexStatus | None
    index_versions: list[str]
    models: list[ModelInfo]
    live_model: str
    jobs: list[Job]
    latency_ms: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["ready", "not_ready"]
    database: str
    index_version: str | None


class ProblemOut(BaseModel):
    field: str
    message: str
    line: int | None = None
    source: str | None = None


class ErrorBody(BaseModel):
    """Every error: a code, a sentence, and for 422 the fields at fault."""

    error: str
    message: str
    problems: list[ProblemOut] | None = None


class AdminUser(BaseModel):
    """The admin page's user inspector: profile, latest events, recommendations explained."""

    profile: UserProfile
    events: list[EventOut]
    recommendations: SearchOut


class AdminItem(BaseModel):
    """The admin page's item page: the item and its similar items, explained."""

    item: ItemOut
    similar: SearchOut
