"""The catalog contract: validate items, and upsert, fetch and delete them in SQL."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.core import clock
from engine.core.contract import (
    MAX_TITLE_CHARS,
    Category,
    Id,
    OptionalText,
    Title,
    check_text,
    described,
    fail,
    finite_number,
    iso_datetime,
    validate,
)
from engine.core.errors import InvalidInput, NotFound, Problem, TooLarge
from engine.store.models import Item, ItemTombstone, ItemVector
from engine.store.notify import announce

MAX_TAGS = 100
MAX_TAG_CHARS = 100
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_NAME_CHARS = 100

AttributeValue = StrictBool | StrictInt | StrictFloat | StrictStr


def _tag(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise fail(f"must be a non-empty string, got {value!r}", "string_type")
    return check_text(value, MAX_TAG_CHARS)


def _tag_list(value: object) -> object:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise fail(f"must be an array of strings, got {described(value)}", "list_type")
    if len(value) > MAX_TAGS:
        raise fail(f"has {len(value)} tags; the limit is {MAX_TAGS}", "too_long")
    return value


def _unique(tags: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(tags))


def _attribute_name(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise fail("attribute names must be non-empty strings", "string_type")
    return check_text(value, MAX_ATTRIBUTE_NAME_CHARS)


def _attributes(value: object) -> object:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(f"must be an object, got {described(value)}", "dict_type")
    if len(value) > MAX_ATTRIBUTES:
        raise fail(f"has {len(value)} entries; the limit is {MAX_ATTRIBUTES}", "too_long")
    return value


def _attribute(value: object) -> object:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return check_text(value, MAX_TITLE_CHARS, required=False) or ""
    if isinstance(value, int | float):
        finite_number(value)
        return value
    raise fail(f"must be a number, string or boolean, got {described(value)}", "attribute")


def _created_at(value: object) -> object:
    return None if value is None or value == "" else iso_datetime(value)


class ItemIn(BaseModel):
    """A validated item, normalized: stripped strings, de-duplicated tags, naive-UTC time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Id
    title: Title
    text: OptionalText = None
    category: Category = None
    tags: Annotated[
        tuple[Annotated[str, BeforeValidator(_tag), Field(max_length=MAX_TAG_CHARS)], ...],
        BeforeValidator(_tag_list),
        AfterValidator(_unique),
        Field(json_schema_extra={"maxItems": MAX_TAGS}),
    ] = ()
    attributes: Annotated[
        dict[
            Annotated[
                str,
                BeforeValidator(_attribute_name),
                Field(max_length=MAX_ATTRIBUTE_NAME_CHARS),
            ],
            Annotated[AttributeValue, BeforeValidator(_attribute)],
        ],
        BeforeValidator(_attributes),
        Field(json_schema_extra={"maxProperties": MAX_ATTRIBUTES}),
    ] = Field(default_factory=dict)
    created_at: Annotated[datetime | None, BeforeValidator(_created_at)] = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "text": self.text,
            "category": self.category,
            "tags": list(self.tags),
            "attributes": dict(self.attributes),
            "created_at": clock.iso_z(self.created_at),
        }

    def content_hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


FIELDS = tuple(ItemIn.model_fields)


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
    return validate(ItemIn, raw, line=line, source=source)


def upsert_items(session: Session, items: Sequence[ItemIn]) -> UpsertCounts:
    """Insert new items, update changed ones, leave identical ones untouched.

    Runs in the caller's transaction; ids must be unique within `items`.
    """
    counts = UpsertCounts()
    if not items:
        return counts
    ids = [item.id for item in items]
    existing = {row.id: row for row in session.scalars(select(Item).where(Item.id.in_(ids))).all()}
    now = clock.utcnow()
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
    inserted = [item.id for item in items if item.id not in existing]
    if inserted:  # an id written again is no longer deleted for the vector stores
        session.execute(delete(ItemTombstone).where(ItemTombstone.item_id.in_(inserted)))
    session.flush()
    if counts.changed:
        announce(session)  # servers' followers look at commit, not at their next poll
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


# What a build and the delta read of each item: its embedded text and its served fields.
INDEXED_COLUMNS = (
    Item.id,
    Item.title,
    Item.text,
    Item.category,
    Item.tags,
    Item.attributes,
    Item.created_at,
)


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
    """Delete the given items; return the ids that did not exist (nothing is deleted then).

    Their stored vectors go with them, and a tombstone each tells the embedding follower to
    drop them from a vector store that holds them (engine.index.embedding_follower).
    """
    found = set(session.scalars(select(Item.id).where(Item.id.in_(list(item_ids)))))
    missing = [i for i in item_ids if i not in found]
    if missing:
        return missing
    ids = sorted(found)
    session.execute(delete(Item).where(Item.id.in_(ids)))
    session.execute(delete(ItemVector).where(ItemVector.item_id.in_(ids)))
    now = clock.utcnow()
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(ItemTombstone)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["item_id"], set_={"deleted_at": stmt.excluded.deleted_at}
        ),
        [{"item_id": i, "deleted_at": now} for i in ids],
    )
    announce(session)
    return []


def prune_tombstones(session: Session, before: datetime) -> int:
    """Forget deletions older than `before`; returns how many.

    A tombstone hides its item from versions built before the deletion (the item watch) and
    drops it from a vector store that took upserts since one (the embedding follower). The
    build prunes those older than every version it keeps could hold (indexer.build).
    """
    result = session.execute(delete(ItemTombstone).where(ItemTombstone.deleted_at < before))
    return int(getattr(result, "rowcount", 0) or 0)


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
        raise InvalidInput("no items in the request body", [Problem("items", "is empty")])
    if len(rows) > max_items:
        raise TooLarge(f"{len(rows)} items in one request; the limit is {max_items}")
    problems: list[Problem] = []
    items: list[ItemIn] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(rows):
        prefix = f"items[{i}]" if isinstance(payload, list) else ""
        try:
            item = validate(ItemIn, raw, prefix=prefix)
        except InvalidInput as exc:
            problems.extend(exc.problems)
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


# How far a watermark over updated_at stays behind what looks settled: covers a writer between
# taking its timestamp and its first statement, and small clock differences between hosts.
SETTLE_MARGIN = timedelta(seconds=1)


def settled_before(session: Session, now: datetime | None = None) -> datetime:
    """A time before which every item write is committed: a reader following updated_at
    (the delta, the embedding follower) must not move its watermark past it.

    updated_at is taken when a row is written, not when its transaction commits, so on
    PostgreSQL a long ingest commits rows older than rows another writer made visible
    meanwhile; a watermark at the newest visible row would skip them for good. Any such
    transaction is open now and started before it wrote them, so the start of the oldest open
    transaction that has written anything bounds them (pg_stat_activity; other roles' sessions
    are only seen with pg_read_all_stats). SQLite writers take the one write lock at BEGIN
    (Runtime.write_session), so their rows commit in timestamp order. now: this process's
    clock (default the real one).
    """
    now = clock.utcnow() if now is None else now
    if session.get_bind().dialect.name == "postgresql":
        oldest = session.execute(
            text(
                "SELECT min(xact_start) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
            )
        ).scalar()
        if oldest is not None:
            now = min(now, oldest.astimezone(UTC).replace(tzinfo=None))
    return now - SETTLE_MARGIN
