"""The index's bodies in the public contract: a version name in, the serving index's status out."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)

from engine.core.contract import described, fail
from engine.index.versions import VERSION_RE

# An index or model version as published by engine/index_store.py: v000001, v000002, ...
VERSION_PATTERN = "^" + VERSION_RE.pattern + "$"


def as_version(value: object) -> object:
    if not isinstance(value, str) or not VERSION_RE.fullmatch(value):
        raise fail(f"must be a published version like v000001, got {described(value)}", "version")
    return value


Version = Annotated[
    str, BeforeValidator(as_version), Field(json_schema_extra={"pattern": VERSION_PATTERN})
]


class VersionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Version


class IndexVersionOut(BaseModel):
    index_version: str


class IndexStatus(BaseModel):
    """The serving index version: its size, type, recall, and the items its delta holds."""

    version: str
    items: int
    factory: str
    params: dict[str, Any]
    size_bytes: int
    built_at: str | None
    recall_at_10: float | None
    delta_items: int
    vector_store: dict[str, Any] | None = None
    # What the vectors are: the encoder, its dimension, and how they are compared.
    model: str | None = None
    dim: int | None = None
    metric: str | None = None
    is_exact: bool | None = Field(default=None, description="a flat index: exact search")
    index_type: str | None = Field(
        default=None, description="Milvus's own index type (HNSW, IVF_FLAT, FLAT); null on FAISS"
    )
