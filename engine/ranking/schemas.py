"""The ranking's bodies in the public contract: model versions, merchandising rules, experiments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from engine.core.contract import Id, QueryText, as_integer, fail, iso_datetime
from engine.index.schemas import Version, as_version


def _candidate(value: object) -> object:
    if value == "latest":
        return value
    return as_version(value)


def _live(value: object) -> object:
    if value == "prior":
        return value
    return as_version(value)


class PromoteBody(BaseModel):
    """A model version to make live (an older one: a rollback)."""

    model_config = ConfigDict(extra="forbid")

    version: Version
    expected: Annotated[str, BeforeValidator(_live)] | None = Field(
        default=None,
        description='the live model the caller saw (a version, or "prior"); given, the promote '
        "is refused (409) when another is live by then, or this one already is",
    )


class ModelVersionOut(BaseModel):
    model_version: str


class ModelInfo(BaseModel):
    version: str
    live: bool
    report: dict[str, Any] | None


class RuleIn(BaseModel):
    """A merchandising rule: pin, boost, bury or hide items by id or by filters (`where`),
    for every query or one query text, optionally within a time window."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["pin", "boost", "bury", "hide"]
    item_id: Id | None = Field(default=None, description="the item the rule is about")
    where: dict[str, Any] | None = Field(
        default=None,
        validate_default=True,
        description="or the items matching these filters (as a search's filters)",
    )
    query: QueryText = Field(default=None, description="only for this query text (normalized)")
    position: Annotated[int, BeforeValidator(as_integer)] | None = Field(
        default=None, ge=1, le=1000, validate_default=True, description="pin: the 1-based position"
    )
    weight: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description="boost/bury: odds times / divided by this (default 2)",
    )
    starts_at: Annotated[datetime, BeforeValidator(iso_datetime)] | None = None
    ends_at: Annotated[datetime, BeforeValidator(iso_datetime)] | None = None

    # Checks across fields run as field validators, in field order, so each error names the
    # field a user has to change.
    @field_validator("where", mode="after")
    @classmethod
    def _one_target(cls, where: dict[str, Any] | None, info: ValidationInfo) -> Any:
        item_id = info.data.get("item_id")
        if (item_id is None) == (where is None):
            raise fail("give exactly one of item_id and where")
        if info.data.get("action") == "pin" and item_id is None:
            raise fail("a pin places one item: give item_id, not where")
        return where

    @field_validator("position", mode="after")
    @classmethod
    def _pin_position(cls, position: int | None, info: ValidationInfo) -> int | None:
        action = info.data.get("action")
        if action == "pin" and position is None:
            raise fail("a pin needs a position (1 = first)")
        if action != "pin" and position is not None:
            raise fail(f"position applies to pin, not {action}")
        return position

    @field_validator("weight", mode="after")
    @classmethod
    def _weight(cls, weight: float | None, info: ValidationInfo) -> float | None:
        action = info.data.get("action")
        if weight is not None and action not in ("boost", "bury"):
            raise fail(f"weight applies to boost and bury, not {action}")
        return weight

    @field_validator("ends_at", mode="after")
    @classmethod
    def _window(cls, ends_at: datetime | None, info: ValidationInfo) -> datetime | None:
        starts_at = info.data.get("starts_at")
        if starts_at is not None and ends_at is not None and starts_at >= ends_at:
            raise fail("must be after starts_at")
        return ends_at


class RuleOut(BaseModel):
    id: int
    action: str
    item_id: str | None
    where: dict[str, Any] | None
    query: str | None
    position: int | None
    weight: float | None
    starts_at: str | None
    ends_at: str | None
    created_at: str


class RuleList(BaseModel):
    rules: list[RuleOut]


class RuleDeleted(BaseModel):
    deleted: int


class ExperimentIn(BaseModel):
    """Start interleaving a candidate model with the live one on a share of searches."""

    model_config = ConfigDict(extra="forbid")

    candidate: Annotated[str, BeforeValidator(_candidate)] = Field(
        description='a model version (v000002) or "latest"'
    )
    traffic: float = Field(
        default=0.5, ge=0.0, le=1.0, allow_inf_nan=False, description="share of searches, 0..1"
    )


class ExperimentOut(BaseModel):
    id: int
    candidate: str
    live: str
    traffic: float
    state: Literal["running", "stopped", "promoted"]
    started_at: str
    stopped_at: str | None
    requests: int = Field(description="interleaved requests shown")
    wins: int = Field(description="clicked requests where the candidate's items won")
    losses: int
    ties: int
    p_value: float = Field(description="two-sided sign test of wins vs losses")


class ExperimentList(BaseModel):
    experiments: list[ExperimentOut]
