"""Delta + tombstones equals a rebuild.

Between builds a search sees the catalog through the serving version, the delta (items written
since, with their vectors and fields; their stale rows in the version shadowed) and the
tombstones (items deleted since, read by the ItemWatch and by SqlState). Whatever was written
or deleted since the build, a search must see what it sees once a fresh build has folded the
same catalog into a new version: the same first-stage candidates, in the same order, with the
same features, and the same results with the same scores.

One part is not equal, and is left out here: keyword (BM25) scores. Between builds the delta
scores its own items with a small BM25 index of its own, whose word weights differ from the
whole catalog's; the version's BM25 still counts deleted and rewritten rows in its word
statistics; and a deleted item keeps its keyword rank until the liveness check drops it, so the
items below it rank one lower. So lexical_score and lexical_rank are not compared, and the
rankers here give them no weight. Everything else (candidates and their order, every other
feature, item fields, deletions, scores) must match exactly.

Each example runs on a fresh database and data dir (SQLite, and PostgreSQL when
RECSEARCH_TEST_DATABASE_URL is set): the first 40 items of the sample catalog, built into an
exact (flat) index, then the operations, then the queries through the delta, then a build, then
the queries again on the new version without a delta.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from engine.catalog.items import ItemIn, delete_items, get_items, upsert_items
from engine.core.clock import iso_z
from engine.core.config import Settings
from engine.encoder.embedder import Embedder
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.search.pipeline import Searcher
from engine.search.request import SearchRequest
from indexer.build import build
from tests.conftest import wiped

CATALOG = Path(__file__).resolve().parents[2] / "data" / "catalog.jsonl"
ROWS: list[dict[str, Any]] = [json.loads(line) for line in CATALOG.read_text().splitlines()[:40]]
ORIGINAL: dict[str, ItemIn] = {row["id"]: ItemIn(**row) for row in ROWS}

# Every search's "now": popularity decay and freshness are the same on both sides.
FIXED_NOW = datetime(2026, 12, 1, 12, 0, 0)
TOL = 1e-5  # features and scores
# Attributes as features, so an attribute written since the build shows in the features.
ATTRIBUTES = "avg_daily_cost_usd,family_friendly,lat"

# Items the operations touch: four of the catalog's, and two new ones (with a first version
# that "restore" writes, as it writes a catalog item's original row).
NEW_ITEMS = {
    "new-cove": ItemIn(
        id="new-cove",
        title="Cove Nova",
        text="A quiet beach with seafood shacks and wine.",
        category="beach",
        tags=("beach", "seafood"),
        attributes={"avg_daily_cost_usd": 90, "family_friendly": True},
        created_at="2026-10-01T00:00:00Z",
    ),
    "new-keep": ItemIn(
        id="new-keep",
        title="Keep Hollow",
        text="An old castle above a market town, with hiking trails.",
        category="culture",
        tags=("castle", "hiking"),
        attributes={"avg_daily_cost_usd": 140, "family_friendly": False},
        created_at="2025-03-15T00:00:00Z",
    ),
}
ORIGINAL.update(NEW_ITEMS)
POOL = ["paris-france", "lisbon-portugal", "lagos-portugal", "zermatt-switzerland", *NEW_ITEMS]

VOCABULARY = (
    "beach",
    "wine",
    "museum",
    "castle",
    "hiking",
    "market",
    "seafood",
    "temple",
    "island",
    "festival",
    "quiet",
    "old",
)
CATEGORIES = ("beach", "city", "culture", "mountain")
CREATED = (None, "2025-01-01T00:00:00Z", "2026-11-20T00:00:00Z")
COSTS = (40, 140, 400)  # either side of the filter below

QUERIES = (
    SearchRequest(q="a quiet beach with wine and seafood", k=10),
    SearchRequest(q="old castles and museums", k=10, category="culture"),
    SearchRequest(q="hiking and markets", k=10, filters={"avg_daily_cost_usd": {"lt": 150}}),
)

Op = tuple[Any, ...]


# Attributes' typical spread, so that the dense model's logits stay where σ is not flat.
_SCALES = {"attr:avg_daily_cost_usd": 200.0, "attr:lat": 45.0}


# Keyword features: approximate between builds (see the module's docstring).
APPROXIMATE = ("lexical_score", "lexical_rank")


def _rankers(names: Sequence[str]) -> list[tuple[str, LinearRanker]]:
    """The hand-set prior, and a dense model in which every feature weighs; neither weighs
    the keyword features."""
    keyword = np.array([n in APPROXIMATE for n in names])
    prior = LinearRanker.prior().aligned(names)
    prior = LinearRanker(prior.names, np.where(keyword, 0.0, prior.weights), prior.bias)
    rng = np.random.default_rng(7)
    weights = np.where(keyword, 0.0, rng.normal(scale=0.5, size=len(names)))
    scale = np.array([_SCALES.get(n, 1.0) for n in names])
    dense = LinearRanker(tuple(names), weights, -1.0, np.zeros(len(names)), scale)
    return [("prior", prior), ("dense", dense)]


# --- one example's database, data dir and runtime -------------------------------------------


@contextmanager
def fresh_runtime(
    db_url: str, root: Path, embedder: Embedder, seed_index: Path
) -> Iterator[Runtime]:
    """A Runtime on an empty database (a new SQLite file, or the PostgreSQL test database's
    schema wiped) and a new data dir under root, with the first 40 catalog items built into a
    flat index (the seed's vectors reused); closed and removed afterwards."""
    folder = Path(tempfile.mkdtemp(dir=root))
    if make_url(db_url).get_backend_name() == "sqlite":
        url = f"sqlite:///{folder / 'test.db'}"
    else:
        wiped(db_url)
        url = db_url
    settings = Settings(
        data_dir=folder / "var",
        database_url=url,
        index_poll_s=0.0,
        index_type="flat",
        feature_attributes=ATTRIBUTES,
    )
    runtime = Runtime(settings, embedder=embedder)
    try:
        shutil.copytree(seed_index, settings.index_dir)
        with runtime.write_session() as session:
            upsert_items(session, [ItemIn(**row) for row in ROWS])
        with runtime.session() as session:
            report = build(runtime, session)
        assert report.item_count == len(ROWS) and report.factory == "Flat"
        yield runtime
    finally:
        runtime.close()
        shutil.rmtree(folder, ignore_errors=True)


# --- the operations ---------------------------------------------------------------------------


def _written(item_id: str, words: Sequence[str], category: str, created: str | None) -> ItemIn:
    """The item with a new text (and so a new vector): the catalog's title and attributes for
    a catalog item, the first version's for a new one."""
    first = ORIGINAL[item_id]
    return ItemIn(
        id=item_id,
        title=first.title,
        text=" ".join(words).capitalize() + ".",
        category=category,
        tags=tuple(words[:2]),
        attributes=dict(first.attributes),
        created_at=created,
    )


def sync(runtime: Runtime) -> None:
    """What the background threads do within a poll or two: the delta reads the writes, the
    follower stores the new vectors, the delta takes them, the watch reads the deletions."""
    runtime.delta.refresh()
    runtime.follower.run_once()
    snapshot = runtime.delta.refresh()
    runtime.watch.refresh()
    # Nothing waits for its vector (it would be shadowed and unsearchable, not a delta bug).
    assert snapshot is not None and not snapshot.pending, (
        f"items still wait for their vectors: {sorted(snapshot.pending) if snapshot else None}; "
        f"this process leads the embedding follower: {runtime.follower.is_leader}"
    )


def apply(runtime: Runtime, op: Op) -> None:
    """One operation, in a transaction of its own; one on an item that is not there (change
    an attribute, delete) does nothing."""
    kind, *args = op
    if kind == "sync":
        sync(runtime)
        return
    item_id = args[0]
    with runtime.write_session() as session:
        if kind == "write":
            upsert_items(session, [_written(item_id, *args[1:])])
        elif kind == "restore":
            upsert_items(session, [ORIGINAL[item_id]])
        elif kind == "attr":
            row = get_items(session, [item_id]).get(item_id)
            if row is not None:
                changed = ItemIn(
                    id=row.id,
                    title=row.title,
                    text=row.text,
                    category=row.category,
                    tags=tuple(row.tags),
                    attributes={**row.attributes, "avg_daily_cost_usd": args[1]},
                    created_at=iso_z(row.created_at),
                )
                upsert_items(session, [changed])
        elif kind == "delete":
            delete_items(session, [item_id])
        else:
            raise AssertionError(f"unknown operation {op!r}")


_ids = st.sampled_from(POOL)
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            _ids,
            st.lists(st.sampled_from(VOCABULARY), min_size=2, max_size=5).map(tuple),
            st.sampled_from(CATEGORIES),
            st.sampled_from(CREATED),
        ),
        st.tuples(st.just("attr"), _ids, st.sampled_from(COSTS)),
        st.tuples(st.just("delete"), _ids),
        st.tuples(st.just("restore"), _ids),  # a deleted id written again, or a text undone
        st.just(("sync",)),  # the delta and the watch catch up in between
    ),
    min_size=1,
    max_size=6,
)


# --- what a search sees -------------------------------------------------------------------------


def observe(runtime: Runtime, make: Callable[[LinearRanker], Searcher]) -> list[dict[str, Any]]:
    """For each query: the first stage's candidates and features, its index version, and the
    results (id, score, fields) under each ranker."""
    names = make(LinearRanker.prior()).feature_names
    searchers = [(label, make(ranker)) for label, ranker in _rankers(names)]
    seen = []
    for request in QUERIES:
        with runtime.read_session() as session:
            stage = searchers[0][1].first_stage(session, request)
        view: dict[str, Any] = {
            "request": request,
            "version": stage.index_version,
            "names": list(stage.names),
            "candidates": [c.item_id for c in stage.candidates],
            "x": np.array(stage.x, dtype=np.float64),
        }
        for label, searcher in searchers:
            with runtime.read_session() as session:
                response = searcher.search(session, request)
            view[label] = [
                (h.id, h.score, (h.title, h.category, list(h.tags), dict(h.attributes)))
                for h in response.results
            ]
        seen.append(view)
    return seen


def delta_searcher(runtime: Runtime) -> Callable[[LinearRanker], Searcher]:
    """Searchers as serving builds them: the version, its delta and the item watch."""

    def make(ranker: LinearRanker) -> Searcher:
        return Searcher(
            runtime.settings,
            runtime.embedder,
            live=runtime.live,
            vectors=runtime.vectors,
            ranker=lambda: ranker,
            delta=runtime.delta,
            watch=runtime.watch,
            clock=lambda: FIXED_NOW,
        )

    return make


def rebuilt_searcher(runtime: Runtime) -> Callable[[LinearRanker], Searcher]:
    """Searchers on whatever version CURRENT names now, with no delta and no watch."""

    def make(ranker: LinearRanker) -> Searcher:
        return Searcher(
            runtime.settings, runtime.embedder, ranker=lambda: ranker, clock=lambda: FIXED_NOW
        )

    return make


def compare(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> list[str]:
    """Every difference between the delta's view (got) and the rebuild's (want)."""
    problems: list[str] = []
    for a, b in zip(got, want, strict=True):
        where = f"q={b['request'].q!r}"
        if a["candidates"] != b["candidates"]:
            problems.append(
                f"{where}: candidates\n  delta   {a['candidates']}\n  rebuild {b['candidates']}"
            )
        elif a["x"].shape != b["x"].shape:
            problems.append(f"{where}: features of shape {a['x'].shape} != {b['x'].shape}")
        else:
            exact = [j for j, n in enumerate(b["names"]) if n not in APPROXIMATE]
            far = np.zeros(a["x"].shape, dtype=bool)
            far[:, exact] = np.abs(a["x"][:, exact] - b["x"][:, exact]) > TOL
            for row, col in zip(*np.nonzero(far), strict=True):
                problems.append(
                    f"{where}: feature {b['names'][col]} of {b['candidates'][row]}: "
                    f"delta {a['x'][row, col]:.6f}, rebuild {b['x'][row, col]:.6f}"
                )
        for label, _ in _rankers(b["names"]):
            problems += _compare_hits(f"{where} {label}", a[label], b[label])
    return problems


def _compare_hits(where: str, got: list[Any], want: list[Any]) -> list[str]:
    ids_got, ids_want = [h[0] for h in got], [h[0] for h in want]
    if ids_got != ids_want and not _same_but_ties(got, want):
        return [f"{where}: results\n  delta   {ids_got}\n  rebuild {ids_want}"]
    by_id = {h[0]: h for h in got}
    problems = []
    for item_id, score, fields in want:
        _, got_score, got_fields = by_id[item_id]
        if abs(got_score - score) > TOL:
            problems.append(f"{where}: {item_id} score delta {got_score}, rebuild {score}")
        if got_fields != fields:
            problems.append(f"{where}: {item_id} fields delta {got_fields}, rebuild {fields}")
    return problems


def _same_but_ties(got: list[Any], want: list[Any]) -> bool:
    """The same items, each at a position whose expected score is within TOL of its own."""
    if sorted(h[0] for h in got) != sorted(h[0] for h in want):
        return False
    score = {h[0]: h[1] for h in want}
    return all(abs(score[g[0]] - w[1]) <= TOL for g, w in zip(got, want, strict=True))


def check(runtime: Runtime, ops: Sequence[Op]) -> list[str]:
    """Apply the operations after the build, search through the delta, build, search again;
    the differences, as readable lines."""
    for op in ops:
        apply(runtime, op)
    sync(runtime)
    through_delta = observe(runtime, delta_searcher(runtime))
    with runtime.session() as session:
        build(runtime, session)
    rebuilt = observe(runtime, rebuilt_searcher(runtime))
    assert [v["version"] for v in rebuilt] != [v["version"] for v in through_delta]
    return compare(through_delta, rebuilt)


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.slow
@hypothesis_settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    # No explain phase: it re-runs a failing example ~100 times (2-4 s each on PostgreSQL).
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
@given(ops=operations)
def test_delta_and_tombstones_equal_a_rebuild(
    ops: list[Op], db_url: str, embedder: Embedder, seed_index: Path, tmp_path: Path
) -> None:
    with fresh_runtime(db_url, tmp_path, embedder, seed_index) as runtime:
        problems = check(runtime, ops)
    assert not problems, f"after {ops}, the delta differs from a rebuild:\n" + "\n".join(problems)


HAND_WRITTEN: list[Op] = [
    # a new item, written twice (its first vector is stored, then superseded)
    ("write", "new-cove", ("quiet", "beach", "wine"), "beach", "2026-11-20T00:00:00Z"),
    ("sync",),
    ("write", "new-cove", ("island", "seafood", "wine", "beach"), "beach", None),
    # a catalog item's text rewritten (its row in the version shadowed), another's attribute
    ("write", "lisbon-portugal", ("old", "castle", "museum"), "culture", "2025-01-01T00:00:00Z"),
    ("attr", "lagos-portugal", 400),
    ("sync",),
    # deleted, then written again: one as it was in the version, one with a new text
    ("delete", "paris-france"),
    ("delete", "zermatt-switzerland"),
    ("sync",),
    ("restore", "paris-france"),
    ("write", "zermatt-switzerland", ("hiking", "market", "old"), "mountain", None),
    # one deleted for good
    ("delete", "lagos-portugal"),
]


def test_hand_written_sequence_equals_a_rebuild(
    db_url: str, embedder: Embedder, seed_index: Path, tmp_path: Path
) -> None:
    with fresh_runtime(db_url, tmp_path, embedder, seed_index) as runtime:
        for op in HAND_WRITTEN:
            apply(runtime, op)
        sync(runtime)
        through_delta = observe(runtime, delta_searcher(runtime))
        # The changes are in the delta's view: the new item is found, the deleted one is not,
        # and the rewritten item's fields are the new ones.
        beach = through_delta[0]
        assert "new-cove" in beach["candidates"]
        assert "lagos-portugal" not in beach["candidates"]
        assert "paris-france" in beach["candidates"]
        fields = {h[0]: h[2] for h in through_delta[1]["prior"]}
        assert fields["lisbon-portugal"][1] == "culture"  # was "city" in the version
        with runtime.session() as session:
            build(runtime, session)
        rebuilt = observe(runtime, rebuilt_searcher(runtime))
    problems = compare(through_delta, rebuilt)
    assert not problems, "the delta differs from a rebuild:\n" + "\n".join(problems)
