"""The frozen search results: a fixed catalog, users, queries, rankers and clock, and what the
engine answered for them, kept in tests/golden/search.json.

tests/test_golden.py runs this scenario on both databases and compares every answer with the
file: ids in order (items whose scores tie within SCORE_TOL may swap), scores, explanations
and the first stage's candidates and features. Any change to what a search returns shows up
there. When a change is meant to alter results, write the file again and review its diff:

    .venv/bin/python -m tests.golden.scenario
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from engine.catalog.items import ItemIn, delete_items, get_item, upsert_items
from engine.core.clock import iso_z
from engine.core.config import Settings
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.search.pipeline import Searcher
from engine.search.request import SearchRequest
from engine.users.events import validate_event
from engine.users.recording import record_events
from indexer.build import build
from indexer.ingest import ingest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("search.json")
CATALOG = ROOT / "data" / "catalog.jsonl"
EVENTS = ROOT / "data" / "events.jsonl"
# Every search's "now" (decay, freshness, tenure); the sample events are from 2026-07.
NOW = datetime(2026, 12, 1, 12, 0, 0)
ATTRIBUTES = "avg_daily_cost_usd,family_friendly,lat"
SCORE_TOL = 1e-5  # scores and features; across CPUs the encoder's last bits may differ

REQUESTS = [
    SearchRequest(q="a quiet beach with turquoise water"),
    SearchRequest(q="Eiffel Tower and the Louvre", k=5),
    SearchRequest(q="good food", k=20, category="desert"),
    SearchRequest(q="good food", category="no-such-category"),
    SearchRequest(q="xylospongium festival"),  # no word in the catalog
    SearchRequest(q="ancient temples", user_id="foodie-1"),
    SearchRequest(q="wine", category="countryside", user_id="wine-lover-1", exclude_seen="none"),
    SearchRequest(user_id="beach-lover-2"),  # recommend from history
    SearchRequest(user_id="luxury-2", exclude_seen="all", k=30),
    SearchRequest(user_id="family-2", category="beach", k=5),
    SearchRequest(context_items=("zermatt-switzerland", "chamonix-france")),  # session
    SearchRequest(q="hiking", context_items=("zermatt-switzerland",), user_id="desert-explorer-2"),
    SearchRequest(),  # popular
    SearchRequest(category="island", k=5),
    SearchRequest(user_id="never-seen", k=7),
    SearchRequest(q="museums and old towns", user_id="foodie-1", explain=True, k=25),
    SearchRequest(q="hiking", k=10, offset=10),
    SearchRequest(q="beach", filters={"avg_daily_cost_usd": {"lt": 150}}, explain=True),
    SearchRequest(q="mountains", diversity=0.5, max_per_category=2, explain=True),
    SearchRequest(similar_to="zermatt-switzerland", k=8),
]
# After the delta scenario: a new item, an attribute change, two deletions since the build.
DELTA_REQUESTS = [
    SearchRequest(q="island beaches with wine"),
    SearchRequest(q="Eiffel Tower and the Louvre", k=5),
    SearchRequest(q="temples in Japan", k=5, explain=True),
    SearchRequest(user_id="foodie-1", k=20),
    SearchRequest(category="island", k=50),
    SearchRequest(q="marsupials", category="island", user_id="beach-lover-2"),
]


def history(runtime: Runtime, seed: Path | None = None) -> None:
    """The sample catalog (some items dated), built into an index version, and the sample
    events recorded. seed: an index folder of the same catalog whose vectors a build reuses."""
    if seed is not None:
        shutil.copytree(seed, runtime.settings.index_dir)
    with runtime.write_session() as session:
        ingest(runtime, session, CATALOG)
    rows = [json.loads(line) for line in CATALOG.read_text().splitlines()]
    dated = [
        ItemIn(**{**row, "created_at": f"20{10 + n % 15}-0{1 + n % 9}-1{n % 10}T08:00:00Z"})
        for n, row in enumerate(rows[::3])
    ]
    with runtime.write_session() as session:
        upsert_items(session, dated)
    with runtime.session() as session:
        build(runtime, session)
    events = [validate_event(json.loads(line), now=NOW) for line in EVENTS.read_text().splitlines()]
    with runtime.write_session() as session:
        record_events(session, events, runtime.settings, runtime.vectors)


def change_since_build(runtime: Runtime) -> None:
    """A new item, an attribute change and two deletions, read into the delta."""
    artifact = runtime.live.get()
    row = artifact.row_of("tokyo-japan")
    assert row is not None and artifact.items is not None
    tokyo = artifact.items[row]
    with runtime.write_session() as session:
        text = get_item(session, "tokyo-japan").text
        upsert_items(
            session,
            [
                ItemIn(
                    id="quokka-island",
                    title="Quokkaville",
                    text="A tiny island famous for its beaches, wine and friendly marsupials.",
                    category="island",
                    tags=("beaches", "wildlife"),
                    attributes={"avg_daily_cost_usd": 80, "family_friendly": True},
                    created_at=iso_z(NOW - timedelta(days=3)),
                ),
                ItemIn(
                    id="tokyo-japan",
                    title=tokyo.title,
                    text=text,
                    category=tokyo.category,
                    tags=tokyo.tags,
                    attributes={**tokyo.attributes, "avg_daily_cost_usd": 999},
                    created_at=iso_z(tokyo.created_at),
                ),
            ],
        )
        delete_items(session, ["paris-france", "kyoto-japan"])
    runtime.delta.refresh()
    runtime.follower.run_once()  # this process embeds the new item (it leads: it is alone)
    runtime.delta.refresh()


def rankers(names: tuple[str, ...]) -> Iterator[tuple[str, LinearRanker]]:
    """The hand-set prior, and a dense model where every feature weighs (attributes too)."""
    yield "prior", LinearRanker.prior()
    rng = np.random.default_rng(7)
    weights, mean = rng.normal(size=len(names)), rng.normal(size=len(names))
    yield "dense", LinearRanker(names, weights, -1.0, mean, np.ones(len(names)))


def searchers(runtime: Runtime) -> Iterator[tuple[str, Searcher]]:
    settings = runtime.settings.replace(feature_attributes=ATTRIBUTES)
    names = Searcher(settings, runtime.embedder).feature_names
    for label, model in rankers(names):
        yield (
            label,
            Searcher(
                settings,
                runtime.embedder,
                live=runtime.live,
                vectors=runtime.vectors,
                ranker=lambda m=model: m,  # type: ignore[misc]
                delta=runtime.delta,
                clock=lambda: NOW,
            ),
        )


def answer(searcher: Searcher, runtime: Runtime, request: SearchRequest) -> dict[str, Any]:
    """What the searcher returns for the request, as plain JSON."""
    with runtime.read_session() as session:
        response = searcher.search(session, request)
    return {
        "request": describe(request),
        "mode": response.mode,
        "next_offset": response.next_offset,
        "results": response.model_dump(mode="json")["results"],
    }


def first_stage(searcher: Searcher, runtime: Runtime, request: SearchRequest) -> dict[str, Any]:
    """The request's candidates and their features (the same whatever the ranker)."""
    with runtime.read_session() as session:
        stage = searcher.first_stage(session, request)
    return {
        "request": describe(request),
        "candidates": [c.item_id for c in stage.candidates],
        "feature_names": list(stage.names),
        "features": np.round(stage.x, 6).tolist(),
    }


def describe(request: SearchRequest) -> dict[str, Any]:
    defaults = SearchRequest()
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in vars(request).items()
        if value != getattr(defaults, name)
    }


def run(runtime: Runtime) -> dict[str, list[dict[str, Any]]]:
    """Every request's first stage, and its answer under every ranker, before and after the
    delta's changes."""
    out: dict[str, list[dict[str, Any]]] = {}
    for requests, suffix in ((REQUESTS, ""), (DELTA_REQUESTS, "+delta")):
        if suffix:
            change_since_build(runtime)
        for label, searcher in searchers(runtime):
            if label == "prior":
                out[f"stage{suffix}"] = [first_stage(searcher, runtime, r) for r in requests]
            out[f"{label}{suffix}"] = [answer(searcher, runtime, r) for r in requests]
    return out


def compare(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Every difference between two runs beyond SCORE_TOL, as readable lines."""
    problems: list[str] = []
    for label in sorted(set(got) | set(want)):
        if label not in got or label not in want:
            problems.append(f"{label}: only in {'the run' if label in got else 'the file'}")
            continue
        for a, b in zip(got[label], want[label], strict=True):
            where = f"{label} {b['request']}"
            for key in ("request", "mode", "next_offset", "feature_names", "candidates"):
                if a.get(key) != b.get(key):
                    problems.append(f"{where}: {key} {a.get(key)!r} != {b.get(key)!r}")
            if "features" in b and not np.allclose(
                a["features"], b["features"], rtol=0, atol=SCORE_TOL
            ):
                problems.append(f"{where}: features differ")
            if "results" in b:
                problems += _compare_hits(where, a["results"], b["results"])
    return problems


def _compare_hits(where: str, got: list[dict[str, Any]], want: list[dict[str, Any]]) -> list[str]:
    if [h["id"] for h in got] != [h["id"] for h in want]:
        if not _same_but_ties(got, want):
            return [f"{where}: ids {[h['id'] for h in got]} != {[h['id'] for h in want]}"]
    by_id = {h["id"]: h for h in got}
    problems = []
    for expected in want:
        hit = by_id[expected["id"]]
        if abs(hit["score"] - expected["score"]) > SCORE_TOL:
            problems.append(f"{where}: {hit['id']} score {hit['score']} != {expected['score']}")
        for key in ("title", "category", "tags", "attributes"):
            if hit[key] != expected[key]:
                problems.append(f"{where}: {hit['id']} {key} differs")
        problems += _compare_explanation(f"{where}: {hit['id']}", hit, expected)
    return problems


def _same_but_ties(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> bool:
    """The same items, each at a position where the file's score is within SCORE_TOL of its
    own (items that tie may come in either order)."""
    if sorted(h["id"] for h in got) != sorted(h["id"] for h in want):
        return False
    score = {h["id"]: h["score"] for h in want}
    return all(
        abs(score[hit["id"]] - expected["score"]) <= SCORE_TOL
        for hit, expected in zip(got, want, strict=True)
    )


def _compare_explanation(where: str, got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    a, b = got.get("explanation"), want.get("explanation")
    if a is None or b is None:
        return [] if a is b else [f"{where}: explanation only on one side"]
    if set(a) != set(b) or a["model"] != b["model"]:
        return [f"{where}: explanation keys {sorted(a)} != {sorted(b)}"]
    problems = []
    for key in ("contributions", "features"):
        if set(a[key]) != set(b[key]) or any(
            abs(a[key][n] - b[key][n]) > SCORE_TOL for n in b[key]
        ):
            problems.append(f"{where}: explanation {key} differ")
    for key in ("logit", "bias", "adjusted_logit"):
        if key in b and abs(a[key] - b[key]) > SCORE_TOL:
            problems.append(f"{where}: explanation {key} {a[key]} != {b[key]}")
    for key in ("rules", "diversity"):
        if key in b and not _close(a[key], b[key]):
            problems.append(f"{where}: explanation {key} differ")
    return problems


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= SCORE_TOL
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(_close(a[k], b[k]) for k in b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def write() -> Path:
    """Run the scenario on a fresh SQLite store and write the golden file."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp) / "var", index_poll_s=0.0)
        runtime = Runtime(settings)
        try:
            history(runtime)
            results = run(runtime)
        finally:
            runtime.close()
    results = _rounded(results)
    lines = [
        f"{json.dumps(label)}: [\n"
        + ",\n".join(json.dumps(a, sort_keys=True) for a in answers)
        + "\n]"
        for label, answers in sorted(results.items())
    ]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    return GOLDEN


def _rounded(value: Any) -> Any:
    """Floats to 7 decimals (well inside SCORE_TOL): a smaller file, a readable diff."""
    if isinstance(value, float):
        return round(value, 7)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


if __name__ == "__main__":
    print(f"wrote {write()}", file=sys.stderr)
