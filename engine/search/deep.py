"""Pages that hold: one order for a search however it is paged, down to MAX_DEPTH results.

The ranker's order depends on the candidate pool: two features are normalized over it
(query_sim_norm, lexical_score), and an item found only by a deeper retrieval can outrank
one found by a shallow one. A pool that grew with offset + k therefore reordered the
positions a client had already seen: walking next_offset from 0 repeated some items and
skipped others.

So the order is defined by tiers whose depths do not depend on the page asked for
(`depths`): tier 1 retrieves `settings.candidates` per source, as a first page always has,
and places all of its candidates in the ranker's order (after the rules and diversity);
tier 2 retrieves four times deeper and places its candidates that tier 1 did not, in its own
ranker's order, continuing diversity from what is above them; and so on to MAX_DEPTH. A page
computes only the tiers it reaches: a first page costs what it did, a deep page one retrieval
per tier. One page of 100 and ten pages of 10 then walk through the same tiers and place the
same items at the same positions. A deeper tier's scores come from a larger pool, so they can
be higher than the last ones of the tier above: positions are what the contract holds.
Pins take their positions in the whole order (engine.ranking.rules.place_pins).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.search.diversify import diversified
from engine.search.rank import Ranked
from engine.search.request import MAX_DEPTH, SearchRequest
from engine.search.stage import Stage

GROWTH = 4  # each tier retrieves this many times deeper than the one above


def depths(first: int, deepest: int = MAX_DEPTH + 1) -> list[int]:
    """Each tier's retrieval depth: first, first·4, … up to deepest (one more than the
    deepest page, which says whether a next page exists)."""
    out = [max(first, 1)]
    while out[-1] < deepest:
        out.append(min(out[-1] * GROWTH, deepest))
    return out


@dataclass(frozen=True, slots=True)
class Placed:
    """One result in the search's order: a candidate of one tier's ranked list."""

    stage: Stage
    ranked: Ranked
    j: int  # into ranked.candidates
    redundancy: float | None = None  # what diversity charged it; None for a pin

    @property
    def item_id(self) -> str:
        return self.ranked.candidates[self.j].item_id

    @property
    def features(self) -> np.ndarray:
        return self.stage.x[self.ranked.rows[self.j]]

    @property
    def probability(self) -> float:
        return float(self.ranked.probabilities[self.j])


@dataclass
class Walk:
    """The search's order, tier by tier, as far as a page needs it."""

    request: SearchRequest
    placed: list[Placed] = field(default_factory=list)
    pins: list[tuple[int, Placed]] = field(default_factory=list)  # (0-based position, result)
    _ids: set[str] = field(default_factory=set)  # placed or pinned
    _seen: set[str] = field(default_factory=set)  # every candidate of every tier so far
    _vectors: list[np.ndarray] = field(default_factory=list)  # of the placed (diversity)
    _counts: dict[str, int] = field(default_factory=dict)  # per category (the cap)
    _tiers: int = 0

    def add(self, stage: Stage, ranked: Ranked, need: int) -> bool:
        """Place the tier's candidates not placed above, up to `need` results in all;
        returns whether the tier found any candidate the tiers above had not."""
        candidates = ranked.candidates
        seen = self._seen
        found_new = any(c.item_id not in seen for c in candidates)  # at once on a first tier
        seen.update(c.item_id for c in candidates)
        if self._tiers == 0:  # the same items are pinned in every tier: the first says where
            self.pins = [(pos, Placed(stage, ranked, j)) for pos, j in ranked.applied.pins]
            self._ids.update(p.item_id for _, p in self.pins)
        self._tiers += 1
        taken = self._ids  # nothing yet on a first tier without pins: the rules' order
        order = (
            [j for j in ranked.applied.order if candidates[j].item_id not in taken]
            if taken
            else ranked.applied.order
        )
        want = need - len(self.placed)
        if want <= 0 or not order:
            return found_new
        picked = np.stack(self._vectors) if self._vectors else None
        picks = diversified(
            self.request, stage, ranked, want, order=order, picked=picked, counts=self._counts
        )
        diverse = self.request.diversity > 0 and stage.vectors is not None
        for j, redundancy in picks:
            result = Placed(stage, ranked, j, redundancy)
            self.placed.append(result)
            self._ids.add(result.item_id)
            if diverse:
                assert stage.vectors is not None
                self._vectors.append(stage.vectors[ranked.rows[j]])
        return found_new

    def interleaved(self, stage: Stage, ranked: Ranked, picks: list[tuple[int, float]]) -> None:
        """A first page mixed with an experiment's model (engine.search.rank.interleave)."""
        self.pins = [(pos, Placed(stage, ranked, j)) for pos, j in ranked.applied.pins]
        self.placed = [Placed(stage, ranked, j, r) for j, r in picks]
        self._tiers = 1
