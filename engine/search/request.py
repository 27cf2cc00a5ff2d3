"""What a search asks: the engine's request, and the public query a client sends (a GET's
query string or a POST's JSON body), validated through engine.core.contract's types into one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

from engine.core.contract import (
    Category,
    Flag,
    Id,
    QueryText,
    as_integer,
    as_number,
    described,
    fail,
)


@dataclass(frozen=True, kw_only=True)
class SearchRequest:
    """A validated search, as the engine runs it (SearchQuery makes one from what a client sent)."""

    q: str | None = None
    k: int = 10
    category: str | None = None
    user_id: str | None = None
    context_items: tuple[str, ...] = ()
    exclude_seen: str = "purchased"
    explain: bool = False
    timings: bool = False  # return per-stage timings even without explanations
    filters: Mapping[str, Any] | None = (
        None  # engine.catalog.filters' language; checked per version
    )
    diversity: float = 0.0  # MMR's λ (engine.search.diversify); 0 = the ranker's order
    max_per_category: int | None = None
    offset: int = 0  # results skipped: pages of k
    similar_to: str | None = None  # items like this one (never itself)


MAX_CONTEXT_ITEMS = 50


EXCLUDE_MODES = ("purchased", "all", "none")


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
    k: Annotated[int, BeforeValidator(as_integer)] = Field(
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
    diversity: Annotated[float, BeforeValidator(as_number)] = Field(
        default=0.0, ge=0.0, le=1.0, description="0..1: maximal marginal relevance (0 = off)"
    )
    max_per_category: Annotated[int, BeforeValidator(as_integer)] | None = Field(
        default=None, ge=1, le=1000, description="at most this many results per category"
    )
    offset: Annotated[int, BeforeValidator(as_integer)] = Field(
        default=0, ge=0, le=1000, description="results to skip (pages); see next_offset"
    )

    @field_validator("k")
    @classmethod
    def _within_max_k(cls, k: int, info: ValidationInfo) -> int:
        return _within_max_k(k, info)

    def to_request(self) -> SearchRequest:
        return SearchRequest(
            q=self.q,
            k=self.k,
            category=self.category,
            user_id=self.user_id,
            context_items=tuple(self.context_items),
            exclude_seen=self.exclude_seen,
            explain=self.explain,
            timings=self.timings,
            filters=self.filters,
            diversity=self.diversity,
            max_per_category=self.max_per_category,
            offset=self.offset,
        )


class SimilarQuery(BaseModel):
    """Items like one item: its vector neighbours and co-visits, ranked by the model."""

    model_config = ConfigDict(extra="forbid")

    k: Annotated[int, BeforeValidator(as_integer)] = Field(
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
        return SearchRequest(
            k=self.k,
            user_id=self.user_id,
            explain=self.explain,
            timings=self.timings,
            exclude_seen="purchased",
            similar_to=item_id,
        )
