"""The rank stage: the ranker's order of the first stage's candidates, with the merchandising
rules applied (hide, boost, bury; pins found), and the team-draft interleaving of a running
experiment's candidate model with it."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from engine.ranking.experiments import Running
from engine.ranking.interleave import Side, team_draft
from engine.ranking.ranker import LinearRanker
from engine.ranking.rules import Applied, Rule
from engine.ranking.rules import apply as apply_rules
from engine.search.candidates import Candidate
from engine.search.stage import Stage

# (index into Ranked.candidates, what diversity charged it: the cosine to a result above)
Pick = tuple[int, float]


@dataclass
class Ranked:
    """The candidates in the ranker's order (equal logits keep the order they were found in),
    and what the rules made of that order."""

    ranker: LinearRanker
    rows: list[int]  # stage rows in ranked order
    candidates: list[Candidate]  # the same, as candidates
    applied: Applied  # indices into `candidates`
    probabilities: np.ndarray  # (len(candidates),) after the rules' logit changes


def rank(stage: Stage, ranker: LinearRanker, rules: list[Rule]) -> Ranked | None:
    """The stage's candidates ranked by σ(w·φ + b), then hidden, boosted, buried and pinned by
    the live rules; None when the stage found nothing."""
    if not stage.candidates:
        return None
    logits = ranker.logits(stage.x)
    found_order = np.array([c.rank for c in stage.candidates])
    rows = np.lexsort((found_order, -logits)).tolist()
    candidates = [stage.candidates[i] for i in rows]
    if rules:
        applied = apply_rules(
            rules, [c.item_id for c in candidates], [c.item for c in candidates], logits[rows]
        )
    else:
        applied = _unruled(logits[rows])
    return Ranked(ranker, rows, candidates, applied, ranker.probability(applied.logits))


def _unruled(logits: np.ndarray) -> Applied:
    """What applying no rule makes of logits already in ranked order: the same order, as
    engine.ranking.rules.apply would give it (its stable sort of a sorted list), without
    a pass over the candidates."""
    adjusted = np.asarray(logits, dtype=np.float64).copy()
    return Applied(list(range(len(adjusted))), adjusted, {}, [], 0)


def interleave(
    stage: Stage,
    ranked: Ranked,
    rules: list[Rule],
    running: Running,
    need: int,
    coin: random.Random,
) -> tuple[list[Pick], dict[str, Side]]:
    """The live and the candidate model's rankings (rules applied to both) merged by team draft:
    the first `need` picks and which side contributed each item. Diversity does not apply."""
    contender = running.candidate.aligned(stage.names)
    candidates = ranked.candidates
    theirs = apply_rules(
        rules,
        [c.item_id for c in candidates],
        [c.item for c in candidates],
        contender.logits(stage.x)[ranked.rows],
    )
    position = {c.item_id: j for j, c in enumerate(candidates)}
    mixed, teams = team_draft(
        [candidates[j].item_id for j in ranked.applied.order],
        [candidates[j].item_id for j in theirs.order],
        need,
        coin,
    )
    return [(position[i], 0.0) for i in mixed], teams
