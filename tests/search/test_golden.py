"""Search answers as frozen in tests/golden/search.json (see tests/golden/scenario.py): the
same catalog, users, queries, rankers and clock give the same ids, scores, explanations,
candidates and features, on both databases."""

from __future__ import annotations

import json
from pathlib import Path

from engine.runtime import Runtime
from tests.golden import scenario


def test_search_answers_match_the_frozen_results(runtime: Runtime, seed_index: Path) -> None:
    scenario.history(runtime, seed=seed_index)
    got = json.loads(json.dumps(scenario.run(runtime)))  # as the file holds them
    want = json.loads(scenario.GOLDEN.read_text(encoding="utf-8"))
    problems = scenario.compare(got, want)
    assert not problems, "\n".join(problems[:20])


def test_the_comparison_catches_a_changed_score_and_order() -> None:
    """compare() is strict where it must be: a score off by more than the tolerance, or two
    items that do not tie swapped, is reported."""
    want = json.loads(scenario.GOLDEN.read_text(encoding="utf-8"))
    answer = next(
        a
        for a in want["prior"]
        if len(a["results"]) >= 3
        and a["results"][0]["score"] - a["results"][2]["score"] > 10 * scenario.SCORE_TOL
    )
    changed = json.loads(json.dumps(want))
    hits = next(a for a in changed["prior"] if a["request"] == answer["request"])["results"]
    hits[0]["score"] += 10 * scenario.SCORE_TOL
    assert any("score" in p for p in scenario.compare(changed, want))
    hits[0]["score"] -= 10 * scenario.SCORE_TOL
    hits[0], hits[2] = hits[2], hits[0]
    assert any("ids" in p for p in scenario.compare(changed, want))
