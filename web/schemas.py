"""The bodies only the web layer returns: health, readiness, errors and the admin page's views."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.catalog.schemas import ItemOut
from engine.core.contract import absent
from engine.core.errors import Problem
from engine.index.schemas import IndexStatus
from engine.ranking.schemas import ModelInfo
from engine.search.response import SearchOut
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
    """The process is up."""

    status: Literal["ok"]


class Ready(BaseModel):
    """Whether this server can answer searches: its database and its published index."""

    status: Literal["ready", "degraded", "not_ready"] = Field(
        description="degraded: searches are answered, but writes to the data dir's disk fail"
    )
    database: str = Field(description='"ok", or why the database is unreachable')
    disk: str = Field(default="ok", description='"ok", or "full: ..." naming the data dir')
    index_version: str | None
    encoder: str | None = Field(
        default=None, exclude_if=absent, description="the encoder serving queries, when ready"
    )
    index: str | None = Field(
        default=None, exclude_if=absent, description="what to do when no index is published"
    )
    workers: str | None = Field(
        default=None,
        exclude_if=absent,
        description='under `recsearch serve`: "N of M loaded"; not ready until all M have',
    )


class ErrorBody(BaseModel):
    """Every error: a code, a sentence, and for 422 the fields at fault."""

    error: str
    message: str
    problems: list[Problem] | None = Field(default=None, exclude_if=absent)


class AdminUser(BaseModel):
    """The admin page's user inspector: profile, latest events, recommendations explained."""

    profile: UserProfile
    events: list[EventOut]
    recommendations: SearchOut


class AdminItem(BaseModel):
    """The admin page's item page: the item and its similar items, explained."""

    item: ItemOut
    similar: SearchOut
