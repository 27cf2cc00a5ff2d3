"""The catalog contract: validate items, and upsert, fetch and delete them in SQL."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from engine.errors import InvalidInput, NotFound, Problem, TooLarge
from engine.models import Item

FIELDS = ("id", "title", "text", "category", "tags", "attributes", "created_at")
MAX_ID_CHARS = 256
MAX_TITLE_CHARS = 1_000
MAX_TEXT_CHARS = 100_000
MAX_CATEGORY_CHARS = 200
MAX_TAGS = 100
MAX_TAG_CHARS = 100
MAX_ATTRIBUTES = 100


@dataclass(frozen=True)
class ItemIn:
    """A validated item, normalized: stripped strings, de-duplicated tags, naive-UTC time."""

    id: str
    title: str
    text: str | None = None
    category: str | None = None
    tags: tuple[str, ...] = ()
    attributes: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    created_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "text": self.text,
            "category": self.category,
            "tags": list(self.tags),
            "attributes": dict(self.attributes),
            "created_at": iso_z(self.created_at),
        }

    def content_hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class UpsertCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return self.inserted + self.updated

    def add(self, other: UpsertCounts) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged


def validate_item(raw: object, *, line: int | None = None, source: str | None = None) -> ItemIn:
    """Check one raw item against the catalog contract; raise InvalidInput naming every problem."""
    problems: list[Problem] = []

    def bad(field_name: str, message: str) -> None:
        problems.append(Problem(field_name, message, line=line, source=source))

    if not isinstance(raw, Mapping):
        bad("(row)", f"expected a JSON object, got {_type_name(raw)}")
        raise InvalidInput(str(problems[0]), problems)

    for key in raw:
        if key not in FIELDS:
            bad(str(key), f"unknown field; allowed fields are {', '.join(FIELDS)}")

    item_id = _required_str(raw, "id", MAX_ID_CHARS, bad)
    title = _required_str(raw, "title", MAX_TITLE_CHARS, bad)
    text = _optional_str(raw, "text", MAX_TEXT_CHARS, bad)
    category = _optional_str(raw, "category", MAX_CATEGORY_CHARS, bad)
    tags = _tags(raw.get("tags"), bad)
    attributes = _attributes(raw.get("attributes"), bad)
    created_at = _timestamp(raw.get("created_at"), bad)

    if problems:
        raise InvalidInput("; ".join(str(p) for p in problems), problems)
    assert item_id is not None and title is not None  # guaranteed when problems is empty
    return ItemIn(item_id, title, text, category, tags, attributes, created_at)


def _type_name(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _required_str(raw: Mapping[str, Any], name: str, limit: int, bad: Any) -> str | None:
    value = raw.get(name)
    if value is None:
        bad(name, "is required")
        return None
    return _check_str(name, value, limit, bad, required=True)


def _optional_str(raw: Mapping[str, Any], name: str, limit: int, bad: Any) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    return _check_str(name, value, limit, bad, required=False)


def _check_str(name: str, value: object, limit: int, bad: Any, *, required: bool) -> str | None:
    if not isinstance(value, str):
        bad(name, f"must be a string, got {_type_name(value)} {value!r}")
        return None
    value = value.strip()
    if not value:
        if required:
            bad(name, "must not be empty")
        return None
    if len(value) > limit:
        bad(name, f"is {len(value)} characters long; the limit is {limit}")
        return None
    if name == "id" and any(ord(ch) < 32 for ch in value):
        bad(name, f"contains control characters: {value!r}")
        return None
    return value


def _tags(value: object, bad: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        bad("tags", f"must be an array of strings, got {_type_name(value)} {value!r}")
        return ()
    if len(value) > MAX_TAGS:
        bad("tags", f"has {len(value)} tags; the limit is {MAX_TAGS}")
        return ()
    out: list[str] = []
    for i, tag in enumerate(value):
        if not isinstance(tag, str) or not tag.strip():
            bad(f"tags[{i}]", f"must be a non-empty string, got {tag!r}")
            continue
        tag = tag.strip()
        if len(tag) > MAX_TAG_CHARS:
            bad(f"tags[{i}]", f"is {len(tag)} characters long; the limit is {MAX_TAG_CHARS}")
            continue
        if tag not in out:
            out.append(tag)
    return tuple(out)


def _attributes(value: object, bad: Any) -> dict[str, str | int | float | bool]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        bad("attributes", f"must be an object, got {_type_name(value)} {value!r}")
        return {}
    if len(value) > MAX_ATTRIBUTES:
        bad("attributes", f"has {len(value)} entries; the limit is {MAX_ATTRIBUTES}")
        return {}
    out: dict[str, str | int | float | bool] = {}
    for key, v in value.items():
        name = f"attributes.{key}"
        if not isinstance(key, str) or not key.strip():
            bad(name, "attribute names must be non-empty strings")
        elif isinstance(v, bool | str):
            out[key] = v
        elif isinstance(v, int | float):
            if not math.isfinite(v):
                bad(name, f"must be a finite number, got {v!r}")
            else:
                out[key] = v
        else:
            bad(name, f"must be a number, string or boolean, got {_type_name(v)} {v!r}")
    return out


def _timestamp(value: object, bad: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        bad("created_at", f"must be an ISO 8601 string, got {_type_name(value)} {value!r}")
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        bad("created_at", f"is not an ISO 8601 date or time: {value!r}")
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def iso_z(value: datetime | None) -> str | None:
    """A naive-UTC datetime as ISO 8601 with a Z, for JSON."""
    return None if value is None else value.isoformat() + "Z"


def utcnow() -> datetime:
    """Naive UTC: what every DateTime column holds, on SQLite and PostgreSQL alike."""
    return datetime.now(UTC).replace(tzinfo=None)


def upsert_items(session: Session, items: Sequence[ItemIn]) -> UpsertCounts:
    """Insert new items, update changed ones, leave identical ones untouched.

    Runs in the caller's transaction; ids must be unique within `items`.
    """
    counts = UpsertCounts()
    if not items:
        return counts
    ids = [item.id for item in items]
    existing = {row.id: row for row in session.scalars(select(Item).where(Item.id.in_(ids))).all()}
    now = utcnow()
    for item in items:
        digest = item.content_hash()
        row = existing.get(item.id)
        if row is None:
            session.add(_new_row(item, digest, now))
            counts.inserted += 1
        elif row.content_hash == digest:
            counts.unchanged += 1
        else:
            _fill_row(row, item, digest, now)
            counts.updated += 1
    session.flush()
    return counts


def _new_row(item: ItemIn, digest: str, now: datetime) -> Item:
    row = Item(id=item.id)
    _fill_row(row, item, digest, now)
    return row


def _fill_row(row: Item, item: ItemIn, digest: str, now: datetime) -> None:
    row.title = item.title
    row.text = item.text
    row.category = item.category
    row.tags = list(item.tags)
    row.attributes = dict(item.attributes)
    row.created_at = item.created_at
    row.content_hash = digest
    row.updated_at = now


def get_item(session: Session, item_id: str) -> Item:
    """The stored item; raises NotFound."""
    row = session.get(Item, item_id)
    if row is None:
        raise NotFound(f"item {item_id!r}")
    return row


def get_items(session: Session, item_ids: Iterable[str]) -> dict[str, Item]:
    """Stored items by id; ids that are not stored are simply absent."""
    ids = list(item_ids)
    if not ids:
        return {}
    return {row.id: row for row in session.scalars(select(Item).where(Item.id.in_(ids)))}


def delete_items(session: Session, item_ids: Sequence[str]) -> list[str]:
    """Delete the given items; return the ids that did not exist (nothing is deleted then)."""
    found = set(session.scalars(select(Item.id).where(Item.id.in_(list(item_ids)))))
    missing = [i for i in item_ids if i not in found]
    if missing:
        return missing
    session.execute(delete(Item).where(Item.id.in_(list(found))))
    return []


def item_to_dict(row: Item) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "text": row.text,
        "category": row.category,
        "tags": list(row.tags or []),
        "attributes": dict(row.attributes or {}),
        "created_at": iso_z(row.created_at),
        "updated_at": iso_z(row.updated_at),
    }


def embedding_text(title: str, text: str | None, category: str | None, tags: Sequence[str]) -> str:
    """What the encoder reads for an item: title first (it survives truncation), then the rest."""
    parts = [title]
    if category:
        parts.append(f"Category: {category}.")
    if tags:
        parts.append(f"Tags: {', '.join(tags)}.")
    if text:
        parts.append(text)
    return " ".join(parts)


def parse_items_payload(payload: object, max_items: int) -> list[ItemIn]:
    """One item, a list of items, or {"items": [...]} from a request body; all or nothing."""
    if isinstance(payload, dict) and set(payload) == {"items"}:
        payload = payload["items"]
    rows = payload if isinstance(payload, list) else [payload]
    if not rows:
        raise InvalidInput("no items in the request body")
    if len(rows) > max_items:
        raise TooLarge(f"{len(rows)} items in one request; the limit is {max_items}")
    problems: list[Problem] = []
    items: list[ItemIn] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(rows):
        prefix = f"items[{i}]" if isinstance(payload, list) else ""
        try:
            item = validate_item(raw)
        except InvalidInput as exc:
            problems.extend(
                Problem(f"{prefix}.{p.field}" if prefix else p.field, p.message)
                for p in exc.problems
            )
            continue
        if item.id in seen:
            first = f"items[{seen[item.id]}]"
            problems.append(Problem(f"{prefix}.id", f"duplicate id {item.id!r}; first at {first}"))
            continue
        seen[item.id] = i
        items.append(item)
    if problems:
        raise InvalidInput("; ".join(str(p) for p in problems[:20]), problems)
    return items


def text_hash(model_name: str, content: str) -> str:
    """Identifies one embedding: the same model and text give the same vector."""
    return hashlib.sha1(f"{model_name}\0{content}".encode(), usedforsecurity=False).hexdigest()
