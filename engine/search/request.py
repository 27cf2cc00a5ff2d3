"""What a search asks: the engine's request, and the public query a client sends (a GET's
query string or a POST's JSON body), validated through engine.core.contract's types into one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

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
    facets: tuple[str, ...] = ()  # fields to count values of (engine.search.facets)
    highlight: bool = False  # mark the query's terms in title and a text snippet
    highlight_pre_tag: str = "<em>"
    highlight_post_tag: str = "</em>"
    crop_length: int = 24  # words in a highlighted text snippet
    fields: tuple[str, ...] | None = None  # which hit fields come back (None: the default set)
    typo_tolerance: bool = True  # the lexical stage corrects misspelt query words


MAX_CONTEXT_ITEMS = 50
# How deep pages reach: offset + k at most (engine.search.deep's last tier).
MAX_DEPTH = 1_000
MAX_FACETS = 20
MAX_TAG_LENGTH = 64
# What a hit can carry besides its id (always there); text only when asked for.
HIT_FIELDS = ("title", "category", "score", "tags", "attributes", "text")
DEFAULT_FIELDS = ("title", "category", "score", "tags", "attributes")


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


def _names(value: object) -> object:
    """A list of field names, or (in a URL) their comma-separated text; repeats dropped."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(
            f"must be a list of field names (or comma-separated in a URL), got {described(value)}",
            "list_type",
        )
    names = list(dict.fromkeys(v.strip() for v in value if v.strip()))
    if len(names) > MAX_FACETS:
        raise fail(f"has {len(names)} names; the limit is {MAX_FACETS}", "too_long")
    return names


def _hit_fields(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    unknown = [v for v in value if v not in HIT_FIELDS and v != "id"]
    if unknown:
        raise fail(
            f"has unknown field {', '.join(map(repr, unknown))}; a hit has "
            f"id, {', '.join(HIT_FIELDS)}",
            "literal_error",
        )
    return value


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
    # Fields a GET may repeat (?facets=a&facets=b) as well as comma-separate.
    LISTS: ClassVar[tuple[str, ...]] = ("context_items", "facets", "fields")

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
        default=0,
        ge=0,
        le=MAX_DEPTH - 1,
        description=f"results to skip (pages); see next_offset. offset + k ≤ {MAX_DEPTH}",
    )
    facets: Annotated[list[str] | None, BeforeValidator(_names)] = Field(
        default=None,
        description="count values of these fields (category, tags, attributes) over the "
        "results total counts; numeric attributes get min and max in facet_stats",
        json_schema_extra={"maxItems": MAX_FACETS},
    )
    highlight: Flag = Field(
        default=False, description="mark the query's terms in each hit's title and a snippet"
    )
    highlight_pre_tag: Annotated[str, Field(max_length=MAX_TAG_LENGTH)] = Field(
        default="<em>", description="written before a marked term"
    )
    highlight_post_tag: Annotated[str, Field(max_length=MAX_TAG_LENGTH)] = Field(
        default="</em>", description="written after a marked term"
    )
    crop_length: Annotated[int, BeforeValidator(as_integer)] = Field(
        default=24, ge=1, le=200, description="words in a highlighted text snippet"
    )
    fields: Annotated[list[str] | None, BeforeValidator(_names)] = Field(
        default=None,
        description="which fields each hit carries besides its id: "
        f"{', '.join(HIT_FIELDS)} (default: all but text)",
    )
    typo_tolerance: Flag = Field(
        default=True,
        description="correct misspelt query words in the lexical stage (1 typo in words of "
        "5+ letters, 2 in 9+)",
    )

    @field_validator("k")
    @classmethod
    def _within_max_k(cls, k: int, info: ValidationInfo) -> int:
        return _within_max_k(k, info)

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: list[str] | None) -> list[str] | None:
        return _hit_fields(value)

    @field_validator("offset")
    @classmethod
    def _within_depth(cls, offset: int, info: ValidationInfo) -> int:
        k = info.data.get("k")  # validated first; absent when k itself was wrong
        if k is not None and offset + k > MAX_DEPTH:
            raise fail(f"{offset} + k {k} is past {MAX_DEPTH}, the deepest a page reaches")
        return offset

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
            facets=tuple(self.facets or ()),
            highlight=self.highlight,
            highlight_pre_tag=self.highlight_pre_tag,
            highlight_post_tag=self.highlight_post_tag,
            crop_length=self.crop_length,
            fields=tuple(self.fields) if self.fields is not None else None,
            typo_tolerance=self.typo_tolerance,
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
