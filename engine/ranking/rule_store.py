"""Merchandising rules in SQL: create, list, delete, and the live set each process serves.

Searches never read the rules table: each process keeps the rules in memory and a thread of
its own reads them again every second (RuleCache), so a rule written through one worker acts
on every worker within a second and at once on the worker that wrote it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.catalog import filters as filtering
from engine.core.clock import iso_z, utcnow
from engine.core.errors import Conflict, InvalidInput, NotFound, Problem
from engine.core.reloaded import Reloaded
from engine.ranking.rules import Rule, normalize_query
from engine.ranking.schemas import RuleIn, RuleOut
from engine.store.models import Item, MerchandisingRule

RELOAD_S = 1.0
MAX_RULE_ID = 2**31 - 1  # an SQL INTEGER: larger ids cannot exist (and PostgreSQL refuses them)


def create(session: Session, body: RuleIn, schema: filtering.Schema | None = None) -> RuleOut:
    """Store a rule; its `where` is checked against the catalog (schema: default from SQL).

    Raises InvalidInput naming `where.<field>` for an unknown attribute or a wrong type, and
    Conflict naming the stored rule that already does this (fingerprint; a unique index
    decides between callers racing to write the same rule).
    """
    if body.where is not None:
        try:
            filtering.parse(body.where, schema or catalog_schema(session), prefix="where")
        except InvalidInput as bad:
            raise InvalidInput(str(bad), bad.problems) from None
        if not body.where:
            raise InvalidInput("where: give at least one field", [Problem("where", "is empty")])
    row = MerchandisingRule(
        action=body.action,
        item_id=body.item_id,
        where=body.where,
        query=normalize_query(body.query),
        position=body.position,
        weight=body.weight,
        starts_at=body.starts_at,
        ends_at=body.ends_at,
        created_at=utcnow(),
    )
    row.fingerprint = fingerprint(row)
    _refuse_duplicate(session, row.fingerprint)
    try:
        with session.begin_nested():  # a savepoint: the refused insert leaves the rest usable
            session.add(row)
    except IntegrityError:
        # Written by another caller between our check and our insert (PostgreSQL waited for
        # it to commit): the unique index refused ours.
        _refuse_duplicate(session, row.fingerprint)
        raise Conflict("the same rule was written at the same time") from None
    return rule_out(row)


def fingerprint(row: MerchandisingRule) -> str:
    """What a rule does to what, and when: its action, target (item_id or where), query and
    time window, hashed. Two rules alike in these are one rule: position and weight are its
    settings (delete it and add it again to change them)."""
    scope = [
        row.action,
        row.item_id,
        row.where,
        row.query,
        row.starts_at.isoformat() if row.starts_at else None,
        row.ends_at.isoformat() if row.ends_at else None,
    ]
    text = json.dumps(scope, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _refuse_duplicate(session: Session, key: str) -> None:
    found = session.scalar(select(MerchandisingRule.id).where(MerchandisingRule.fingerprint == key))
    if found is not None:
        raise Conflict(f"rule {found} already does this: delete it first to change it")


def list_all(session: Session) -> list[RuleOut]:
    rows = session.scalars(select(MerchandisingRule).order_by(MerchandisingRule.id))
    return [rule_out(r) for r in rows]


def remove(session: Session, rule_id: int) -> None:
    """Delete one rule; raises NotFound for an unknown id (or one no rule can have).

    One DELETE ... WHERE id: of callers racing to delete a rule, the database lets one remove
    the row and the others find none (NotFound: it is already gone)."""
    if not 1 <= rule_id <= MAX_RULE_ID:
        raise NotFound(f"rule {rule_id}")
    gone = session.execute(delete(MerchandisingRule).where(MerchandisingRule.id == rule_id))
    if not gone.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"rule {rule_id} (already deleted, or never added)")


def load(session: Session) -> list[Rule]:
    return [to_rule(r) for r in session.scalars(select(MerchandisingRule))]


def catalog_schema(session: Session) -> filtering.Schema:
    """The attributes of the catalog in SQL and their kinds (an admin action: reads them all)."""
    kinds: dict[str, set[filtering.Kind]] = {}
    for attributes in session.scalars(select(Item.attributes)):
        for name, value in (attributes or {}).items():
            kind = filtering.kind_of(value)
            if kind is not None:
                kinds.setdefault(name, set()).add(kind)
    return filtering.Schema(kinds)


def to_rule(row: MerchandisingRule) -> Rule:
    where = None
    if row.where is not None:
        # Checked when it was written; parse against the kinds its own values imply, so a
        # rule outlives a catalog that no longer has the attribute (it then matches nothing).
        where = filtering.parse(row.where, _schema_of(row.where), prefix="where")
    return Rule(
        id=row.id,
        action=row.action,  # type: ignore[arg-type]
        item_id=row.item_id,
        where=where,
        query=row.query,
        position=row.position,
        weight=row.weight if row.weight is not None else 2.0,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        where_raw=row.where,
    )


def rule_out(row: MerchandisingRule) -> RuleOut:
    return RuleOut(
        id=row.id,
        action=row.action,
        item_id=row.item_id,
        where=row.where,
        query=row.query,
        position=row.position,
        weight=row.weight,
        starts_at=iso_z(row.starts_at) if row.starts_at else None,
        ends_at=iso_z(row.ends_at) if row.ends_at else None,
        created_at=iso_z(row.created_at),
    )


def _schema_of(where: Mapping[str, Any]) -> filtering.Schema:
    kinds: dict[str, set[filtering.Kind]] = {}
    for name, spec in where.items():
        values = [spec]
        if isinstance(spec, Mapping):
            values = [v for vs in spec.values() for v in (vs if isinstance(vs, list) else [vs])]
            if set(spec) & {"any", "all"}:
                kinds.setdefault(name, set()).add("list")
        for v in values:
            kind = filtering.kind_of(v)
            if kind is not None:
                kinds.setdefault(name, set()).add(kind)
    return filtering.Schema(kinds)


class RuleCache(Reloaded[list[Rule]]):
    """The rules one process serves: read once, then again in the background every reload_s
    (engine.core.reloaded); invalidate() after a write in this process."""

    def __init__(self, sessions: Callable[[], Session], reload_s: float = RELOAD_S) -> None:
        self._sessions = sessions
        super().__init__(self._load, reload_s, "rules")

    def _load(self, previous: list[Rule] | None) -> list[Rule]:
        with self._sessions() as session:
            return load(session)
