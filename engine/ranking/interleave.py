"""Team-draft interleaving (Radlinski, Kurup & Joachims, 2008) and its sign test.

An online experiment shows one list made of two rankings — the live model's and a
candidate's — and credits each click to the ranking that contributed the clicked item. Team
draft: the side with fewer picks so far (a coin flip when even) adds its best item not yet
shown, so neither side is favoured by position on average. A request where the candidate's
items got more clicks is a win, fewer a loss, as many a tie; over many requests a two-sided
sign test on wins vs losses says whether the difference is more than chance.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence
from typing import Literal

Side = Literal["live", "candidate"]
Outcome = Literal["win", "loss", "tie"]


def team_draft(
    live: Sequence[str], candidate: Sequence[str], k: int, rng: random.Random
) -> tuple[list[str], dict[str, Side]]:
    """The interleaved top k and which side contributed each item."""
    shown: list[str] = []
    team: dict[str, Side] = {}
    rankings: dict[Side, Sequence[str]] = {"live": live, "candidate": candidate}
    next_at: dict[Side, int] = {"live": 0, "candidate": 0}
    picks: dict[Side, int] = {"live": 0, "candidate": 0}

    def best_unshown(side: Side) -> str | None:
        ranking = rankings[side]
        while next_at[side] < len(ranking) and ranking[next_at[side]] in team:
            next_at[side] += 1
        return ranking[next_at[side]] if next_at[side] < len(ranking) else None

    while len(shown) < k:
        if picks["live"] != picks["candidate"]:
            first: Side = "live" if picks["live"] < picks["candidate"] else "candidate"
        else:
            first = "live" if rng.random() < 0.5 else "candidate"
        second: Side = "candidate" if first == "live" else "live"
        side: Side = first
        item = best_unshown(first)
        if item is None:  # one ranking ran out: the other fills the rest
            side, item = second, best_unshown(second)
            if item is None:
                break
        shown.append(item)
        team[item] = side
        picks[side] += 1
    return shown, team


def credit(team: dict[str, Side], clicked: Collection[str]) -> Outcome | None:
    """Win, loss or tie for the candidate from the clicked items; None without a click."""
    sides = [team[i] for i in clicked if i in team]
    if not sides:
        return None
    for_candidate = sides.count("candidate")
    for_live = len(sides) - for_candidate
    if for_candidate > for_live:
        return "win"
    if for_candidate < for_live:
        return "loss"
    return "tie"


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of wins vs losses under p = ½ (ties left out).

    Summed in log space, so it stays exact to float precision for any number of requests.
    """
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses must be >= 0, got {wins}, {losses}")
    n = wins + losses
    if n == 0:
        return 1.0
    tail = min(wins, losses)
    log_half_n = n * math.log(0.5)
    terms = [_log_comb(n, i) + log_half_n for i in range(tail + 1)]
    top = max(terms)
    log_tail = top + math.log(sum(math.exp(t - top) for t in terms))
    return min(1.0, 2.0 * math.exp(log_tail))


def _log_comb(n: int, i: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
