"""Typed bodies of the public contract: search, items, events, users, jobs, admin, errors.

The request models validate (through engine.contract's types); the response models document
what the API returns and are what /openapi.json is generated from. `search_json` is the one
serializer of a search response: the API, the admin playground and `recsearch search --json`
all print it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from engine.catalog import ItemIn
from engine.contract import (
    Category,
    Id,
    QueryText,
    described,
    fail,
    iso_datetime,
)
from engine.events import EventBody
from engine.index_store import VERSION_RE

if TYPE_CHECKING:
    from engine.search import SearchRequest, SearchResponse

MAX_CONTEXT_ITEMS = 50
EXCLUDE_MODES = ("purchased", "all", "none")
# An index or model version as published by engine/index_store.py: v000001, v000002, ...
VERSION_PATTERN = "^" + VERSION_RE.pattern + "$"
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _flag(value: object) -> object:
    """true/false as JSON or as a query-string word."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise fail(f"must be true or false, got {described(value)}", "bool_parsing")


def _integer(value: object) -> object:
    """An integer as JSON or as a query-string word; not a boolean, not 2.5."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():  # 5.0 is an integer in JSON Schema
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise fail(f"must be an integer, got {described(value)}", "int_type")


def _context_items(value: object) -> object:
    if value is None or value == "":
        return []
    if isinstance(value, str):  # a URL's comma-separated list
        value = value.split(",")
    if not isinstance(value, list):
        raise fail(
            f"must be a list of item ids (or comma-separated in a URL), got {described(value)}",
            "list_type",
        )
    if len(value) > MAX_CONTEXT_ITEMS:
        raise fail(f"has {len(value)} ids; the limit is {MAX_CONTEXT_ITEMS}", "too_long")
    if not all(isinstance(i, str) for i in value):
        raise fail("must be a list of item ids (strings)", "list_type")
    return list(dict.fromkeys(i.strip() for i in value if i.strip()))


def _exclude(value: object) -> object:
    if isinstance(value, bool):
        return "purchased" if value else "none"
    if isinstance(value, str):
        word = value.strip().lower()
        mapped = {"true": "purchased", "false": "none"}.get(word, word)
        if mapped in EXCLUDE_MODES:
            return mapped
    raise fail(
        f"must be true, false or one of {', '.join(EXCLUDE_MODES)}, got {described(value)}",
        "literal_error",
    )


Flag = Annotated[bool, BeforeValidator(_flag)]


def _json_object(value: object) -> object:
    """An object, or (in a query string) its JSON text."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except ValueError:
            raise fail(f"is not a JSON object: {described(value)}", "json_invalid") from None
    if value is not None and not isinstance(value, dict):
        raise fail(f"must be an object, got {described(value)}", "dict_type")
    return value


def _number(value: object) -> object:
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(f"must be a number, got {described(value)}", "float_type")
    return value


def _within_max_k(k: int, info: ValidationInfo) -> int:
    """k within 1..max_k, the server's limit (validation context; 100 without one)."""
    max_k = int((info.context or {}).get("max_k", 100))
    if not 1 <= k <= max_k:
        raise fail(f"must be between 1 and {max_k}, got {k}")
    return k


class SearchQuery(BaseModel):
    """A search: a query, a user, a session, or none (popular items). GET takes the same
    fields as query parameters (context_items repeated or comma-separated)."""

    model_config = ConfigDict(extra="forbid")

    q: QueryText = Field(default=None, description="the query text")
    k: Annotated[int, BeforeValidator(_integer)] = Field(
        default=10,
        ge=1,
        description="how many results (at most RECSEARCH_MAX_K)",
        json_schema_extra={"maximum": 100},  # /openapi.json puts the server's RECSEARCH_MAX_K
    )
    category: Category = Field(default=None, description="only items of this category")
    user_id: Annotated[Id | None, BeforeValidator(lambda v: None if v == "" else v)] = Field(
        default=None, description="personalize for this user"
    )
    context_items: Annotated[
        list[Annotated[Id, Field(max_length=256)]], BeforeValidator(_context_items)
    ] = Field(
        default_factory=list,
        description="item ids of the current session",
        json_schema_extra={"maxItems": MAX_CONTEXT_ITEMS},
    )
    exclude_seen: Annotated[Literal["purchased", "all", "none"], BeforeValidator(_exclude)] = Field(
        default="purchased", description="true (= purchased), false (= none), or all"
    )
    explain: Flag = Field(default=False, description="each score's feature contributions")
    timings: Flag = Field(
        default=False, description="per-stage timings_ms, also without explanations"
    )
    filters: Annotated[dict[str, Any] | None, BeforeValidator(_json_object)] = Field(
        default=None,
        description='item fields and attributes: {"country": "Japan"}, '
        '{"cost": {"gte": 50, "lte": 100}}, {"continent": {"in": [...]}}, '
        '{"tags": {"any": [...]}} or {"all": [...]}, booleans; a JSON string in a GET',
    )
    diversity: Annotated[float, BeforeValidator(_number)] = Field(
        default=0.0, ge=0.0, le=1.0, description="0..1: maximal marginal relevance (0 = off)"
    )
    max_per_category: Annotated[int, BeforeValidator(_integer)] | None = Field(
        default=None, ge=1, le=1000, description="at most this many results per category"
    )
    offset: Annotated[int, BeforeValidator(_integer)] = Field(
        default=0, ge=0, le=1000, description="results to skip (pages); see next_offset"
    )

    @field_validator("k")
    @classmethod
    def _within_max_k(cls, k: int, info: ValidationInfo) -> int:
        return _within_max_k(k, info)

    def to_request(self) -> SearchRequest:
        from engine.search import SearchRequest

        return SearchRequest(
            self.q,
            self.k,
            self.category,
            self.user_id,
            tuple(self.context_items),
            self.exclude_seen,
            self.explain,
            self.timings,
            self.filters,
            self.diversity,
            self.max_per_category,
            self.offset,
        )


class SimilarQuery(BaseModel):
    """Items like one item: its vector neighbours and co-visits, ranked by the model."""

    model_config = ConfigDict(extra="forbid")

    k: Annotated[int, BeforeValidator(_integer)] = Field(
        default=10, ge=1, json_schema_extra={"maximum": 100}, description="how many"
    )
    user_id: Annotated[Id | None, BeforeValidator(lambda v: None if v == "" else v)] = Field(
        default=None, description="personalize for this user"
    )
    explain: Flag = False
    timings: Flag = False

    @field_validator("k")
    @classmethod
    def _within_max_k(cls, k: int, info: ValidationInfo) -> int:
        return _within_max_k(k, info)

    def to_request(self, item_id: str) -> SearchRequest:
        from engine.search import SearchRequest

        return SearchRequest(
            k=self.k,
            user_id=self.user_id,
            explain=self.explain,
            timings=self.timings,
            exclude_seen="purchased",
            similar_to=item_id,
        )


class Explanation(BaseModel):
    """Why a hit scored what it did: the contributions plus the bias sum to the logit."""

    model: str
    logit: float
    bias: float
    contributions: dict[str, float]
    features: dict[str, float]
    rules: list[dict[str, Any]] | None = Field(
        default=None, description="the merchandising rules that changed this result"
    )
    adjusted_logit: float | None = Field(
        default=None, description="the logit after boost/bury rules (the score's)"
    )
    diversity: dict[str, float] | None = Field(
        default=None, description="MMR: the cosine to the closest result above it"
    )


class SearchHit(BaseModel):
    id: str
    title: str
    category: str | None
    score: float = Field(description="the ranker's probability, 0..1")
    tags: list[str]
    attributes: dict[str, bool | int | float | str]
    explanation: Explanation | None = Field(default=None, description="with explain=true")


class SearchOut(BaseModel):
    results: list[SearchHit]
    index_version: str
    took_ms: float
    mode: Literal["search", "recommend", "popular", "similar"]
    request_id: str = Field(description="send it with events that follow from these results")
    next_offset: int | None = Field(
        default=None, description="the offset of the next page; null at the end"
    )
    timings_ms: dict[str, float] | None = Field(
        default=None,
        description="per stage (embed, user, retrieve, features, rank), with explain or timings",
    )


def search_json(response: SearchResponse, *, explain: bool = False) -> dict[str, Any]:
    """The one JSON form of a search response (API, admin playground, CLI --json)."""
    results = []
    for hit in response.results:
        result: dict[str, Any] = {
            "id": hit.id,
            "title": hit.title,
            "category": hit.category,
            "score": hit.score,
            "tags": list(hit.tags),
            "attributes": dict(hit.attributes),
        }
        if hit.explanation is not None:
            result["explanation"] = hit.explanation
        results.append(result)
    body: dict[str, Any] = {
        "results": results,
        "index_version": response.index_version,
        "took_ms": response.took_ms,
        "mode": response.mode,
        "request_id": response.request_id,
        "next_offset": response.next_offset,
    }
    if explain or response.show_timings:
        body["timings_ms"] = dict(response.timings_ms)
    return body


class ItemsBody(BaseModel):
    """A batch of items; POST /v1/items also takes one item or a bare array of them."""

    model_config = ConfigDict(extra="forbid")

    items: list[ItemIn] = Field(min_length=1)


class ItemOut(BaseModel):
    id: str
    title: str
    text: str | None
    category: str | None
    tags: list[str]
    attributes: dict[str, bool | int | float | str]
    created_at: str | None
    updated_at: str | None


class ItemsWritten(BaseModel):
    inserted: int
    updated: int
    unchanged: int
    ids: list[str]
    note: str


class ItemDeleted(BaseModel):
    deleted: str


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


class Job(BaseModel):
    id: int
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    params: dict[str, Any]
    phase: str | None
    done: int
    total: int
    percent: float | None
    rate: float | None
    eta_s: float | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None
    result: dict[str, Any] | None


class JobList(BaseModel):
    jobs: list[Job]


class TrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["auto", "impressions", "events"] = Field(
        default="auto",
        description="auto: logged impressions when some were clicked, else the event history",
    )
    promote: Flag = False


class EmptyBody(BaseModel):
    """No fields; an empty body or {} is fine."""

    model_config = ConfigDict(extra="forbid")


def _candidate(value: object) -> object:
    if value == "latest":
        return value
    return _version(value)


def _version(value: object) -> object:
    if not isinstance(value, str) or not VERSION_RE.fullmatch(value):
        raise fail(f"must be a published version like v000001, got {described(value)}", "version")
    return value


Version = Annotated[
    str, BeforeValidator(_version), Field(json_schema_extra={"pattern": VERSION_PATTERN})
]


class VersionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Version


class IndexVersionOut(BaseModel):
    index_version: str


class ModelVersionOut(BaseModel):
    model_version: str


class IndexStatus(BaseModel):
    version: str
    items: int
    factory: str
    params: dict[str, Any]
    size_bytes: int
    built_at: str | None
    recall_at_10: float | None
    delta_items: int
    vector_store: dict[str, Any] | None = None


class ModelInfo(BaseModel):
    version: str
    live: bool
    report: dict[str, Any] | None


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
    position: Annotated[int, BeforeValidator(_integer)] | None = Field(
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


class EventOut(BaseModel):
    type: str
    item_id: str
    ts: str
    value: float | None
    request_id: str | None


class AdminUser(BaseModel):
    """The admin page's user inspector: profile, latest events, recommendations explained."""

    profile: UserProfile
    events: list[EventOut]
    recommendations: SearchOut


class AdminItem(BaseModel):
    """The admin page's item page: the item and its similar items, explained."""

    item: ItemOut
    similar: SearchOut
