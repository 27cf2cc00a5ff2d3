"""One suite over the vector stores, FAISS, Milvus Lite and a real Milvus server (2.3.5, with
authorization and TLS on: tests/index/conftest.py): build, search, filters, upsert, delete,
rebuild, rollback, prune, the recall gate, consistency, and the stores' answers compared on
the sample catalog.

Milvus Lite starts a server in this process (seconds), so the module shares one Lite
database, and the run one server; each test gets its own alias (collections are named after
it), which keeps tests apart as separate deployments on one Milvus server would be.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from engine.catalog.filters import Schema, parse
from engine.core.config import Settings
from engine.core.errors import ConfigError, Conflict
from engine.encoder.embedder import Embedder
from engine.index.ann import item_writer
from engine.index.ann.milvus_alias import alias_target
from engine.index.ann.milvus_client import client
from engine.index.ann.milvus_filter import all_of, between, equals, for_filters, one_of, quote
from engine.index.artifact import IndexArtifact, IndexStore
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from indexer.build import BuildReport, build
from indexer.ingest import ingest
from tests.conftest import SAMPLE_CATALOG
from tests.milvus_server import MilvusTarget

STORES = ["faiss", "lite", "server"]


def store_settings(base: Settings, target: MilvusTarget | None, **changes: object) -> Settings:
    """FAISS (target None), or Milvus at the target, under an alias of the test's own."""
    if target is None:
        return base.replace(vector_store="faiss", index_type="flat", **changes)
    return base.replace(
        vector_store="milvus",
        milvus_collection=f"t_{uuid.uuid4().hex[:12]}",
        index_type="flat",
        **target.settings,
        **changes,
    )


def target_of(request: pytest.FixtureRequest, store: str) -> MilvusTarget | None:
    """The Milvus a store name stands for: None (FAISS), Milvus Lite or the server."""
    if store == "faiss":
        return None
    if store == "server":
        server: MilvusTarget = request.getfixturevalue("milvus_server_target")
        return server
    lite: str = request.getfixturevalue("lite_uri")
    return MilvusTarget("lite", lite, {"milvus_uri": lite})


def strong(target: MilvusTarget) -> dict[str, str]:
    """Searches that see every write at once: tests that read Milvus right after writing."""
    return {"milvus_consistency": "Strong"} if target.kind == "server" else {}


def sample_runtime(settings: Settings, embedder: Embedder, seed_index: Path) -> Runtime:
    """A runtime with the sample catalog ingested, and the seed's FAISS version copied in so
    builds reuse its vectors instead of encoding the catalog again."""
    shutil.copytree(seed_index, settings.index_dir)
    runtime = Runtime(settings, embedder=embedder)
    with runtime.write_session() as session:
        ingest(runtime, session, SAMPLE_CATALOG)
    return runtime


def run_build(runtime: Runtime, **kw: object) -> BuildReport:
    with runtime.session() as session:
        report = build(runtime, session, **kw)  # type: ignore[arg-type]
    assert report.version is not None
    return report


def served(runtime: Runtime) -> IndexArtifact:
    return runtime.live.get()


@pytest.fixture(params=STORES)
def store_runtime(
    request: pytest.FixtureRequest,
    sqlite_settings: Settings,
    embedder: Embedder,
    seed_index: Path,
) -> Runtime:
    settings = store_settings(sqlite_settings, target_of(request, request.param))
    runtime = sample_runtime(settings, embedder, seed_index)
    request.addfinalizer(runtime.close)
    return runtime


@pytest.mark.parametrize("store", STORES)
def test_build_search_filter_rebuild_rollback(
    store: str,
    settings: Settings,  # on SQLite, and on PostgreSQL when a URL is given
    request: pytest.FixtureRequest,
    embedder: Embedder,
    seed_index: Path,
) -> None:
    if store == "server" and settings.db_url.startswith("postgresql"):
        # Four builds on the server take a minute; the database plays no part in what this
        # checks of Milvus, and FAISS and Lite run on both databases.
        pytest.skip("the Milvus server's case runs on SQLite (CI time)")
    target = target_of(request, store)
    settings = store_settings(settings, target, keep_versions=2)
    backend = settings.vector_store
    runtime = sample_runtime(settings, embedder, seed_index)
    request.addfinalizer(runtime.close)

    first = run_build(runtime)
    assert first.reused == first.item_count == 325 and first.recall_at_10 == 1.0
    manifest = IndexStore(settings.index_dir).manifest(first.version)  # type: ignore[arg-type]
    assert manifest["index"]["backend"] == backend and manifest["index"]["is_exact"]
    assert manifest["vector_store"]["backend"] == backend
    assert {"items.json", "vectors.npy", "lexical", "manifest.json"} <= {
        p.name
        for p in (settings.index_dir / first.version).iterdir()  # type: ignore[operator]
    }
    if target is not None:
        assert manifest["vector_store"] == {
            "backend": "milvus",
            "uri": target.uri,
            "collection": manifest["index"]["collection"],
            "alias": settings.milvus_collection,
        }
        assert manifest["index"]["layout"] == 2
        milvus = client(target.uri)
        assert alias_target(milvus, settings.milvus_collection) == manifest["index"]["collection"]

    artifact = served(runtime)
    assert artifact.ann.is_live == (target is not None)
    paris = artifact.vectors()[artifact.row_of("paris-france")]  # type: ignore[index]
    hits = artifact.ann.search_ids(paris, 10)
    assert hits[0][0] == "paris-france" and len(hits) == 10
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    beaches = artifact.ann.search_ids(paris, 10, category="beach")
    category_of = dict(zip(artifact.ids, artifact.categories, strict=True))
    assert len(beaches) == 10 and {category_of[i] for i, _ in beaches} == {"beach"}
    assert artifact.ann.search_ids(paris, 10, category='beach" or category != "') == []

    with runtime.session() as session:
        response = runtime.searcher.search(session, SearchRequest(q="museums in Paris", k=5))
    assert response.index_version == first.version and response.results[0].id == "paris-france"

    second = run_build(runtime)
    assert (first.version, second.version) == ("v000002", "v000003")  # after the seed's
    if target is not None:
        second_collection = served(runtime).manifest["index"]["collection"]
        assert alias_target(milvus, settings.milvus_collection) == second_collection
    IndexStore(settings.index_dir).point_current_at(first.version)  # type: ignore[arg-type]
    assert served(runtime).version == first.version
    if target is not None:
        first_collection = manifest["index"]["collection"]
        assert alias_target(milvus, settings.milvus_collection) == first_collection
        # A third build keeps two versions. The first's folder goes, but not yet its
        # collection: it served until this publish, and other processes may still search it.
        third = run_build(runtime)
        assert IndexStore(settings.index_dir).versions() == [second.version, third.version]
        third_collection = served(runtime).manifest["index"]["collection"]
        # One a build crashed in long ago (named by no version): the next build drops it.
        crashed = f"{settings.milvus_collection}_20000101T000000_0badf00d"
        milvus.create_collection(crashed, dimension=4)
        # A fourth build prunes the second, which served no one lately: its collection goes.
        fourth = run_build(runtime)
        assert IndexStore(settings.index_dir).versions() == [third.version, fourth.version]
        fourth_collection = served(runtime).manifest["index"]["collection"]
        ours = {c for c in milvus.list_collections() if c.startswith(settings.milvus_collection)}
        assert ours == {first_collection, third_collection, fourth_collection}


def test_upsert_and_delete_go_straight_into_the_serving_collection(
    sqlite_settings: Settings, embedder: Embedder, seed_index: Path, milvus_target: MilvusTarget
) -> None:
    settings = store_settings(sqlite_settings, milvus_target, **strong(milvus_target))
    runtime = sample_runtime(settings, embedder, seed_index)
    try:
        run_build(runtime)
        artifact = served(runtime)
        assert artifact.ann.read_your_writes
        writer = item_writer(settings)
        assert writer is not None
        paris = np.asarray(artifact.vectors()[artifact.row_of("paris-france")])  # type: ignore[index]
        # A new item, and an existing one moved to another category, with new vectors.
        writer.upsert(
            ["paris-twin", "kyoto-japan"],
            np.stack([paris, paris]),
            ["city", "beach"],
            tags=[["art"], ["zen-gardens"]],
            attributes=[{"country": 'Fra"nce'}, {"country": "Japan"}],
        )
        top = [i for i, _ in artifact.ann.search_ids(paris, 3)]
        assert set(top) == {"paris-france", "paris-twin", "kyoto-japan"}  # Paris's vector
        assert "kyoto-japan" in [i for i, _ in artifact.ann.search_ids(paris, 5, category="beach")]
        # The row search serves only the build's rows: the new item has none.
        _, rows = artifact.ann.search(paris, 3)
        assert "paris-twin" not in [artifact.ids[r] for r in rows[0] if r >= 0]
        # Attribute and tag filters run inside Milvus, with quoted values.
        milvus = client(milvus_target.uri)
        found = milvus.query(
            settings.milvus_collection,
            filter=equals("country", 'Fra"nce'),
            output_fields=["id"],
            consistency_level="Strong",
        )
        assert [r["id"] for r in found] == ["paris-twin"]
        found = milvus.query(
            settings.milvus_collection,
            filter=equals("tags", "zen-gardens"),
            output_fields=["id"],
            consistency_level="Strong",
        )
        assert [r["id"] for r in found] == ["kyoto-japan"]

        # Expressions over the build's rows agree with the catalog evaluated in Python
        # (the two items just upserted have other fields now).
        expression = all_of(
            [
                one_of("continent", ["Europe", "Asia"]),
                between("avg_daily_cost_usd", 100, 200, high_inclusive=False),
                equals("family_friendly", True),
                one_of("tags", ["food", "beach"]),
            ]
        )
        found = milvus.query(
            settings.milvus_collection,
            filter=expression,
            output_fields=["id"],
            consistency_level="Strong",
        )
        assert artifact.items is not None
        upserted = {"paris-twin", "kyoto-japan"}
        expected = {
            i
            for i, item in zip(artifact.ids, artifact.items, strict=True)
            if item.attributes["continent"] in ("Europe", "Asia")
            and 100 <= item.attributes["avg_daily_cost_usd"] < 200
            and item.attributes["family_friendly"] is True
            and {"food", "beach"} & set(item.tags)
            and i not in upserted
        }
        assert expected and {r["id"] for r in found} - upserted == expected

        writer.delete(["paris-twin", "no-such-item"])
        top = [i for i, _ in artifact.ann.search_ids(paris, 3)]
        # kyoto-japan holds Paris's vector now: the two tie, in either order.
        assert "paris-twin" not in top and set(top[:2]) == {"paris-france", "kyoto-japan"}

    finally:
        runtime.close()


def test_writes_during_a_build_survive_the_alias_move(
    sqlite_settings: Settings, embedder: Embedder, seed_index: Path, milvus_target: MilvusTarget
) -> None:
    settings = store_settings(sqlite_settings, milvus_target, **strong(milvus_target))
    runtime = sample_runtime(settings, embedder, seed_index)
    try:
        run_build(runtime)
        writer = item_writer(settings)
        assert writer is not None
        artifact = served(runtime)
        paris = np.asarray(artifact.vectors()[artifact.row_of("paris-france")])  # type: ignore[index]

        def write_mid_build(phase: str, done: int, total: int) -> None:
            # After the catalog was read, before the alias moves: lands in the old collection.
            if phase == "publish" and done == 0:
                writer.upsert(["written-mid-build"], paris[None, :], ["city"])

        run_build(runtime, progress=write_mid_build)
        rebuilt = served(runtime)
        assert "written-mid-build" in [i for i, _ in rebuilt.ann.search_ids(paris, 3)]
    finally:
        runtime.close()


def test_stores_return_the_same_top_10(
    sqlite_settings: Settings,
    embedder: Embedder,
    seed_index: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Exact indexes over the same vectors: the same neighbours, scores and searches, on
    FAISS, Milvus Lite and the Milvus server."""
    runtimes = {}
    for store in STORES:
        base = sqlite_settings.replace(data_dir=tmp_path / store)
        runtimes[store] = sample_runtime(
            store_settings(base, target_of(request, store)), embedder, seed_index
        )
    try:
        artifacts = {}
        for store, runtime in runtimes.items():
            run_build(runtime)
            artifacts[store] = served(runtime)
        faiss = artifacts["faiss"].ann
        queries = embedder.encode(
            ["quiet beaches with coral reefs", "museums and art", "hiking in the alps"]
        )
        queries = np.concatenate([queries, artifacts["faiss"].vectors()[::40]])
        categories = [None, "beach", "city", "nature"]
        for store in ("lite", "server"):
            milvus = artifacts[store].ann
            for query in queries:
                for category in categories:
                    a = faiss.search_ids(query, 10, category=category)
                    b = milvus.search_ids(query, 10, category=category)
                    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
                    # Ids may differ only among equal scores.
                    differs = [x != y for (x, _), (y, _) in zip(a, b, strict=True)]
                    assert not any(differs) or _tied(a, differs)
        # Searches, with filters too: Milvus runs them as expressions, FAISS over its rows.
        selective = {"continent": "Asia", "avg_daily_cost_usd": {"lt": 60}}
        requests = [
            SearchRequest(q="quiet beaches with coral reefs", k=10),
            SearchRequest(q="street food", k=10),
            SearchRequest(q="ski resorts", k=10),
            SearchRequest(q="ski resorts", k=10, filters=selective),
            SearchRequest(q="temples", k=10, filters={"tags": {"any": ["diving", "wildlife"]}}),
        ]
        for search in requests:
            results = []
            for runtime in runtimes.values():
                with runtime.session() as session:
                    response = runtime.searcher.search(session, search)
                results.append([(h.id, round(h.score, 5)) for h in response.results])
            assert len(results[0]) == 10
            assert results[0] == results[1] == results[2], search
    finally:
        for runtime in runtimes.values():
            runtime.close()


def _tied(hits: list[tuple[str, float]], differs: list[bool]) -> bool:
    scores = [s for _, s in hits]
    return all(
        any(abs(scores[i] - scores[j]) < 1e-6 for j in range(len(scores)) if j != i)
        for i, d in enumerate(differs)
        if d
    )


def test_recall_gate_publishes_nothing_and_leaves_no_collection(
    store_runtime: Runtime,
) -> None:
    settings = store_runtime.settings
    first = run_build(store_runtime)
    bad = settings.replace(index_type="ivf", ivf_nprobe=1, min_recall=0.999)
    with pytest.raises(Conflict, match="below RECSEARCH_MIN_RECALL"):
        run_build(store_runtime, settings=bad)
    store = IndexStore(settings.index_dir)
    assert store.current_version() == first.version
    if settings.vector_store == "milvus":
        milvus = client(settings.milvus_target)
        ours = [c for c in milvus.list_collections() if c.startswith(settings.milvus_collection)]
        assert ours == [store.manifest(first.version)["index"]["collection"]]  # type: ignore[arg-type]


def test_expressions_quote_every_value() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"' and quote("ü") == '"ü"'
    assert quote(True) == "true" and quote(2) == "2" and quote(1.5) == "1.5"
    assert equals("category", 'x" or id != "') == 'category == "x\\" or id != \\""'
    assert equals("price", 3) == 'attributes["price"] == 3'
    assert equals('a"]', "v") == 'attributes["a\\"]"] == "v"'
    assert one_of("tags", ["a", 'b"']) == 'json_contains_any(tags["v"], ["a", "b\\""])'
    assert between("cost", 1, None) == 'attributes["cost"] >= 1.0'
    assert (
        one_of("country", ["a", "b"])
        == 'attributes["country"] == "a" or attributes["country"] == "b"'
    )
    assert between("cost", None, None) == "" and all_of(["", "a == 1", "b"]) == "(a == 1) and (b)"
    with pytest.raises(ValueError):
        quote(float("nan"))
    with pytest.raises(TypeError):
        quote(None)  # type: ignore[arg-type]


def test_lite_open_in_another_process_is_a_clear_error(lite_uri: str) -> None:
    """Milvus Lite locks its folder: a second process (a second gunicorn worker) fails at
    once with a message that says what to do, instead of hanging."""
    client(lite_uri)  # this process holds it
    code = (
        "import sys\n"
        "from engine.index.ann.milvus import client\n"
        "from engine.core.errors import ConfigError\n"
        "try:\n"
        f"    client({lite_uri!r})\n"
        "except ConfigError as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "open in another process" in done.stdout and "http://host:19530" in done.stdout


def test_serve_refuses_several_workers_on_milvus_lite(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from web.cli import Context, cli

    settings = Settings(data_dir=tmp_path / "var", vector_store="milvus")
    result = CliRunner().invoke(cli, ["serve", "--workers", "2"], obj=Context(settings, True))
    assert result.exit_code == 2
    assert "serves one process: use --workers 1" in result.output


def test_milvus_setup_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.core.errors import ConfigError
    from engine.index.ann import RowLabels, create_index

    faiss_only = Settings(data_dir=tmp_path, vector_store="milvus", index_type="IVF64,PQ8")
    with pytest.raises(ConfigError, match="use auto, flat, hnsw or ivf"):
        create_index("milvus", 8, 10, faiss_only, RowLabels(["a"], [None]))
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'recsearch\[milvus\]'"):
        client(str(tmp_path / "elsewhere.db"))


def test_a_search_finds_items_upserted_into_milvus(
    sqlite_settings: Settings,
    embedder: Embedder,
    seed_index: Path,
    milvus_target: MilvusTarget,
    tmp_path: Path,
) -> None:
    """With Milvus the search path's ANN call is the id search: an item written since the
    build is found in the collection, with a category no build has seen."""
    from tests.conftest import write_jsonl

    settings = store_settings(sqlite_settings, milvus_target, **strong(milvus_target))
    runtime = sample_runtime(settings, embedder, seed_index)
    try:
        run_build(runtime)
        artifact = served(runtime)
        paris = np.asarray(artifact.vectors()[artifact.row_of("paris-france")])  # type: ignore[index]
        new = {"id": "lutetia", "title": "Lutetia", "text": "Old Paris.", "category": "ancient"}
        with runtime.write_session() as session:
            ingest(runtime, session, write_jsonl(tmp_path / "new.jsonl", [new]))
        writer = item_writer(settings)
        assert writer is not None
        writer.upsert(["lutetia"], paris[None, :], ["ancient"])
        with runtime.session() as session:
            request = SearchRequest(q="museums in Paris", k=5, category="ancient")
            response = runtime.searcher.search(session, request)
        assert [h.id for h in response.results] == ["lutetia"]
    finally:
        runtime.close()


def test_the_follower_writes_new_items_into_milvus(
    sqlite_settings: Settings,
    embedder: Embedder,
    seed_index: Path,
    milvus_target: MilvusTarget,
    tmp_path: Path,
) -> None:
    """No hand-made upsert: the elected follower embeds the new item once and writes it into
    the serving collection, where the search's id-level ANN call finds it."""
    from tests.conftest import write_jsonl

    settings = store_settings(sqlite_settings, milvus_target, **strong(milvus_target))
    runtime = sample_runtime(settings, embedder, seed_index)
    try:
        run_build(runtime)
        new = {"id": "lutetia", "title": "Lutetia", "text": "Old Paris.", "category": "ancient"}
        with runtime.write_session() as session:
            ingest(runtime, session, write_jsonl(tmp_path / "new.jsonl", [new]))
        assert runtime.follower.run_once() == 1 and runtime.follower.is_leader
        with runtime.session() as session:
            request = SearchRequest(q="old Paris", k=5, category="ancient")
            response = runtime.searcher.search(session, request)
        assert [h.id for h in response.results] == ["lutetia"]
    finally:
        runtime.close()


def test_filters_become_one_expression() -> None:
    schema = Schema(
        {"continent": {"text"}, "cost": {"number"}, "colors": {"list"}, "kid": {"bool"}}
    )
    filters = parse(
        {
            "category": {"in": ["beach", "city"]},
            "tags": {"all": ["food", 'a"b']},
            "continent": "Asia",
            "cost": {"gt": 10, "lte": 50},
            "kid": True,
            "colors": {"any": ["red"]},
        },
        schema,
    )
    assert for_filters(filters) == " and ".join(
        [
            '(category in ["beach", "city"])',
            '(json_contains_all(tags["v"], ["food", "a\\"b"]))',
            '(attributes["continent"] == "Asia" or json_contains(attributes["continent"], "Asia"))',
            '(attributes["cost"] > 10.0 and attributes["cost"] <= 50.0)',
            '(attributes["kid"] == true or json_contains(attributes["kid"], true))',
            '(attributes["colors"] == "red" or json_contains(attributes["colors"], "red"))',
        ]
    )
    assert for_filters(filters, tags="tags").count("json_contains_all(tags, ") == 1
    assert for_filters(parse(None, schema)) == ""


def test_filters_run_inside_milvus(
    sqlite_settings: Settings, embedder: Embedder, seed_index: Path, milvus_target: MilvusTarget
) -> None:
    """The id search takes the request's filters: every hit matches, and as many as match
    come back (no fetch-and-drop that a selective filter would starve)."""
    settings = store_settings(sqlite_settings, milvus_target)
    runtime = sample_runtime(settings, embedder, seed_index)
    try:
        run_build(runtime)
        artifact = served(runtime)
        assert artifact.items is not None
        fields = dict(zip(artifact.ids, artifact.items, strict=True))
        paris = np.asarray(artifact.vectors()[artifact.row_of("paris-france")])  # type: ignore[index]
        schema = Schema.from_items(artifact.items)
        for raw in [
            {"continent": "Asia", "avg_daily_cost_usd": {"lt": 60}},
            {"tags": {"all": ["diving", "snorkeling"]}},
            {"category": "desert", "continent": {"in": ["Africa", "Asia"]}},
        ]:
            where = parse(raw, schema)
            matching = [i for i, f in fields.items() if where.matches(f)]
            hits = artifact.ann.search_ids(paris, 50, where=where)
            assert 0 < len(matching) <= 50 and {i for i, _ in hits} == set(matching), raw
            assert all(where.matches(fields[i]) for i, _ in hits), raw
    finally:
        runtime.close()


def test_a_weaker_consistency_serves_written_items_from_the_delta(
    sqlite_settings: Settings,
    embedder: Embedder,
    seed_index: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """Under Bounded (the default) an item just written may not show in the server's
    collection yet: the delta serves it. Here the follower stores the new item's vector but
    never writes it into Milvus, so only the delta can find it: under Bounded the search
    does, under Strong (which trusts the collection alone) it does not."""
    from tests.conftest import write_jsonl

    target = target_of(request, "server")
    assert target is not None
    found = {}
    for level in ("Bounded", "Strong"):
        base = sqlite_settings.replace(data_dir=tmp_path / level)
        settings = store_settings(base, target, milvus_consistency=level)
        runtime = sample_runtime(settings, embedder, seed_index)
        try:
            run_build(runtime)
            assert served(runtime).ann.read_your_writes == (level == "Strong")
            runtime.follower.set_sink(None)  # the vector is stored, Milvus never hears of it
            # Words no query below holds: BM25 (which always reads the delta) cannot find it.
            new = {"id": "lutetia", "title": "Zzyzx", "text": "Qwv.", "category": "old"}
            with runtime.write_session() as session:
                ingest(runtime, session, write_jsonl(tmp_path / f"{level}.jsonl", [new]))
            assert runtime.follower.run_once() == 1
            runtime.delta.refresh()
            with runtime.session() as session:
                search = SearchRequest(q="museums in Paris", k=5, category="old")
                found[level] = [h.id for h in runtime.searcher.search(session, search).results]
        finally:
            runtime.close()
    assert found == {"Bounded": ["lutetia"], "Strong": []}


def test_an_unreachable_milvus_fails_the_build_in_seconds(
    sqlite_settings: Settings, embedder: Embedder, seed_index: Path
) -> None:
    """Nothing listens at the address: the build fails at once naming it, and the version
    that served still does."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed when the build runs
    settings = store_settings(sqlite_settings, None)
    runtime = sample_runtime(settings, embedder, seed_index)
    try:
        before = IndexStore(settings.index_dir).current_version()
        assert before is not None
        elsewhere = settings.replace(vector_store="milvus", milvus_uri=address)
        started = time.monotonic()
        with pytest.raises(ConfigError, match=f"cannot open Milvus at {address}"):
            run_build(runtime, settings=elsewhere)
        assert time.monotonic() - started < 15
        assert IndexStore(settings.index_dir).current_version() == before
    finally:
        runtime.close()


def test_credentials_reach_the_server_and_wrong_ones_are_refused_naming_it(
    milvus_server_target: MilvusTarget, tmp_path: Path
) -> None:
    """A user and password work as the token does; a wrong password, or TLS without the CA
    that signed the server's certificate, fail in seconds naming the server. Each case has a
    URI of its own (clients are one per URI and process), as another process would."""
    from engine.index.ann.milvus_client import remember

    base = milvus_server_target.settings
    port = milvus_server_target.uri.rsplit(":", 1)[1]
    token = {k: v for k, v in base.items() if k != "milvus_token"}
    cases = [
        (
            f"https://localhost:{port}",
            {**token, "milvus_user": "root", "milvus_password": "Milvus"},
        ),
        (f"https://127.0.0.1:{port}/", {**base, "milvus_token": "root:not-the-password"}),
        (f"https://localhost:{port}/", {**base, "milvus_ca_cert": ""}),
    ]
    for n, (uri, values) in enumerate(cases):
        settings = Settings(
            data_dir=tmp_path, vector_store="milvus", **{**values, "milvus_uri": uri}
        )
        remember(settings)
        started = time.monotonic()
        if n == 0:
            assert isinstance(client(uri).list_collections(), list)
            continue
        with pytest.raises(ConfigError, match=f"cannot open Milvus at {uri}"):
            client(uri)
        assert time.monotonic() - started < 15


def test_collections_of_the_first_layout_still_take_writes_and_filters(lite_uri: str) -> None:
    """A collection an earlier recsearch made (nullable category, tags as a JSON array:
    Milvus 2.5 and Lite only) keeps serving: writes and tag filters follow its layout."""
    from pymilvus import DataType, MilvusClient

    from engine.index.ann.milvus_rows import layout_of, tags_path
    from engine.index.ann.milvus_writer import MilvusWriter

    milvus = client(lite_uri)
    name, alias = f"old_{uuid.uuid4().hex[:8]}", f"t_{uuid.uuid4().hex[:8]}"
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=256)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
    schema.add_field("category", DataType.VARCHAR, max_length=200, nullable=True)
    schema.add_field("tags", DataType.JSON, nullable=True)
    schema.add_field("attributes", DataType.JSON, nullable=True)
    schema.add_field("written_at", DataType.INT64)
    milvus.create_collection(name, schema=schema)
    params = milvus.prepare_index_params()
    params.add_index("vector", index_type="FLAT", metric_type="IP", params={})
    milvus.create_index(name, params, sync=False)
    milvus.load_collection(name)
    milvus.create_alias(name, alias)
    try:
        assert layout_of(milvus, alias) == 1
        writer = MilvusWriter(lite_uri, alias)
        writer.upsert(["a", "b"], np.eye(2, dtype=np.float32), [None, "x"], [["sea"], []], None)
        rows = milvus.query(name, filter='id in ["a", "b"]', output_fields=["category", "tags"])
        assert {r["id"]: (r["category"], r["tags"]) for r in rows} == {
            "a": (None, ["sea"]),
            "b": ("x", None),
        }
        found = milvus.query(name, filter=equals("tags", "sea", tags=tags_path(1)))
        assert [r["id"] for r in found] == ["a"]
    finally:
        milvus.drop_alias(alias)
        milvus.drop_collection(name)
