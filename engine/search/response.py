"""What a search answers: the hits, each with its score and, when asked, the explanation of it.

These models are the response: the API, the admin page and `recsearch search --json` all
write them with model_dump_json, and /openapi.json describes them. Fields that only some
responses carry (explanation, timings_ms and the explanation's rules and diversity) are left
out when empty, not written as null.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from engine.core.contract import absent


class Explanation(BaseModel):
    """Why a hit scored what it did: the contributions plus the bias sum to the logit."""

    model: str
    logit: float
    bias: float
    contributions: dict[str, float]
    features: dict[str, float]
    rules: list[dict[str, Any]] | None = Field(
        default=None,
        exclude_if=absent,
        description="the merchandising rules that changed this result",
    )
    adjusted_logit: float | None = Field(
        default=None,
        exclude_if=absent,
        description="the logit after boost/bury rules (the score's)",
    )
    diversity: dict[str, float] | None = Field(
        default=None,
        exclude_if=absent,
        description="MMR: the cosine to the closest result above it",
    )


class SearchHit(BaseModel):
    """One result: the item's fields a page shows, and its score. A request's `fields` picks
    which of title, category, score, tags, attributes and text come back (id always does)."""

    id: str
    title: str
    category: str | None
    score: float = Field(description="the ranker's probability, 0..1")
    tags: list[str]
    attributes: dict[str, bool | int | float | str]
    text: str | None = Field(
        default=None, exclude_if=absent, description='the item\'s text, with fields=["text"]'
    )
    highlights: dict[str, str] | None = Field(
        default=None,
        exclude_if=absent,
        description="with highlight=true: the title and a text snippet, HTML-escaped, the "
        "query's terms between the highlight tags",
    )
    explanation: Explanation | None = Field(
        default=None, exclude_if=absent, description="with explain=true"
    )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """As written, a hit promises no field: a request's `fields` leaves some out."""
        if handler.mode == "serialization":
            return {}
        return handler(core_schema)

    def only(self, fields: tuple[str, ...] | None) -> SearchHit:
        """This hit, writing only the given fields (and id, highlights, explanation)."""
        if fields is None:
            return self
        values = {name: getattr(self, name) for name in type(self).model_fields}
        selected = _SelectedHit.model_construct(self.model_fields_set, **values)
        selected._left_out = frozenset(LISTED_FIELDS) - set(fields)
        return selected


class _SelectedHit(SearchHit):
    """A hit that leaves out the fields its request did not pick. Only these hits are written
    through a serializer of their own (SearchOut.results serializes each hit as its class):
    on every hit it cost most of the response's serialization."""

    _left_out: frozenset[str] = PrivateAttr(default=frozenset())

    @model_serializer(mode="wrap")
    def _without_left_out(self, write: SerializerFunctionWrapHandler) -> Any:
        data = write(self)
        for name in self._left_out:
            data.pop(name, None)
        return data


# The hit fields a request's `fields` chooses among (engine.search.request.HIT_FIELDS).
LISTED_FIELDS = ("title", "category", "score", "tags", "attributes", "text")


# "search" (a query), "recommend" (a user or a session only), "popular" (nothing to go on),
# "similar" (items like one item)
Mode = Literal["search", "recommend", "popular", "similar"]


class SearchOut(BaseModel):
    """A page of results, how it was found, and how to ask for the next page."""

    results: list[SerializeAsAny[SearchHit]]  # as its class: _SelectedHit leaves fields out
    index_version: str
    took_ms: float
    mode: Mode
    request_id: str = Field(description="send it with events that follow from these results")
    next_offset: int | None = Field(
        default=None, description="the offset of the next page; null at the end"
    )
    total: int = Field(
        default=0,
        description="how many results the search has: every item its category, filters and "
        "exclusions select; a lower bound (total_relation gte) where pages stop at their "
        "depth before the selection ends",
    )
    total_relation: Literal["eq", "gte"] = Field(
        default="eq", description="eq: total is exact; gte: at least total"
    )
    facets: dict[str, dict[str, int]] | None = Field(
        default=None,
        exclude_if=absent,
        description="with facets: per field, how many of the selected items carry each value",
    )
    facet_stats: dict[str, dict[str, float]] | None = Field(
        default=None,
        exclude_if=absent,
        description="with facets naming numeric attributes: their min and max over the selection",
    )
    timings_ms: dict[str, float] | None = Field(
        default=None,
        exclude_if=absent,
        description="per stage (embed, user, retrieve, features, rank; total: the selection "
        "and facets counted), with explain or timings",
    )
    # What each stage took, whether or not the response shows it (metrics count every search).
    _stages: dict[str, float] = PrivateAttr(default_factory=dict)

    @property
    def stages_ms(self) -> dict[str, float]:
        return self._stages

    def timed(self, stages_ms: dict[str, float]) -> SearchOut:
        """This response, knowing what each stage took (kept out of the JSON)."""
        self._stages = stages_ms
        return self
