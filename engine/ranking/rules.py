"""Merchandising rules: pin, boost, bury or hide items, for every query or one query text.

A rule names its items by id or by filters (`where`, the same language as a search's
filters). Boost and bury move an item's logit by ±ln(weight) — its odds times or divided by
the weight — so the explanation still sums to the logit, with the rule as one more term.
Hide drops items. Pin puts one item at a 1-based position of the final list, whatever the
ranker thought of it, and brings it in when no candidate source found it (it still has to
exist and to pass the request's filters). Rules only act at request time, so deleting them
restores the ranking exactly.

The order inside a search: rank → rules (hide, boost, bury) → diversify → pins → page.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

import numpy as np

from engine.catalog.fields import ItemFields
from engine.catalog.filters import Filters

Action = Literal["pin", "boost", "bury", "hide"]
ACTIONS: tuple[Action, ...] = ("pin", "boost", "bury", "hide")

T = TypeVar("T")


def normalize_query(text: str | None) -> str | None:
    """The form a rule's query is matched in: case-folded, spaces collapsed, None if blank."""
    if text is None:
        return None
    folded = re.sub(r"\s+", " ", text).strip().casefold()
    return folded or None


@dataclass(frozen=True)
class Rule:
    id: int
    action: Action
    item_id: str | None = None
    where: Filters | None = None
    query: str | None = None  # normalized; None = every query (and no query)
    position: int | None = None  # pin, 1-based
    weight: float = 2.0  # boost and bury
    starts_at: datetime | None = None  # naive UTC, like every stored time
    ends_at: datetime | None = None
    where_raw: dict[str, Any] | None = field(default=None, compare=False)

    def is_live(self, now: datetime, query: str | None) -> bool:
        """In its time window, and for this (normalized) query text if it names one."""
        if self.starts_at is not None and now < self.starts_at:
            return False
        if self.ends_at is not None and now >= self.ends_at:
            return False
        return self.query is None or self.query == query

    def selects(self, item_id: str, item: ItemFields) -> bool:
        if self.item_id is not None:
            return item_id == self.item_id
        return self.where is not None and self.where.matches(item)

    def describe(self) -> dict[str, Any]:
        """What an explanation shows of the rule."""
        out: dict[str, Any] = {"rule_id": self.id, "action": self.action}
        if self.item_id is not None:
            out["item_id"] = self.item_id
        if self.where_raw is not None:
            out["where"] = self.where_raw
        if self.query is not None:
            out["query"] = self.query
        return out


@dataclass
class Applied:
    """What the rules did to one ranked list (indices into the candidates)."""

    order: list[int]  # by adjusted logit, hidden ones removed
    logits: np.ndarray  # adjusted, for every candidate
    effects: dict[int, list[dict[str, Any]]]  # candidate → the rules that changed it
    pins: list[tuple[int, int]]  # (0-based position, candidate), by position
    hidden: int = 0


def live_rules(rules: Sequence[Rule], now: datetime, query: str | None) -> list[Rule]:
    q = normalize_query(query)
    return [r for r in rules if r.is_live(now, q)]


def pinned_ids(rules: Sequence[Rule]) -> list[str]:
    """Items live pins name: the search scores them even when no source found them."""
    return [r.item_id for r in rules if r.action == "pin" and r.item_id is not None]


def apply(
    rules: Sequence[Rule], ids: Sequence[str], items: Sequence[ItemFields], logits: np.ndarray
) -> Applied:
    """Hide, boost and bury; order by the adjusted logit (ties in input order); find pins.

    rules: the live ones (live_rules); ids, items, logits: the ranked candidates, aligned.
    """
    adjusted = np.asarray(logits, dtype=np.float64).copy()
    effects: dict[int, list[dict[str, Any]]] = {}
    hidden: set[int] = set()
    pinned: dict[int, tuple[int, Rule]] = {}  # candidate → (position, rule)
    taken: set[int] = set()  # positions
    for rule in sorted(rules, key=lambda r: r.id):
        for i, (item_id, item) in enumerate(zip(ids, items, strict=True)):
            if not rule.selects(item_id, item):
                continue
            if rule.action == "hide":
                hidden.add(i)
                effects.setdefault(i, []).append(rule.describe())
            elif rule.action in ("boost", "bury"):
                step = math.log(rule.weight) * (1 if rule.action == "boost" else -1)
                adjusted[i] += step
                effects.setdefault(i, []).append({**rule.describe(), "logit_change": step})
            elif rule.position is not None and i not in pinned:
                position = rule.position - 1
                if position in taken:  # two pins on one slot: the older rule keeps it
                    continue
                taken.add(position)
                pinned[i] = (position, rule)
    for i, (position, rule) in pinned.items():
        if i in hidden:  # a pin does not resurrect a hidden item
            continue
        effects.setdefault(i, []).append({**rule.describe(), "position": position + 1})
    order = [
        int(i) for i in np.argsort(-adjusted, kind="stable") if i not in hidden and i not in pinned
    ]
    pins = sorted((pos, i) for i, (pos, _) in pinned.items() if i not in hidden)
    return Applied(order, adjusted, effects, pins, len(hidden))


def place_pins(order: list[T], pins: Sequence[tuple[int, T]]) -> list[T]:
    """The final order: each pinned candidate at its position (past the end: last)."""
    out = list(order)
    for position, i in pins:
        out.insert(min(position, len(out)), i)
    return out
