"""Search latency at 1k, 10k and 100k items: /v1/search in-process, and everything but the
encoder, with and without a user, with a trained ranker; baselines in the same run.

    .venv/bin/python bench/search_latency.py [--sizes 1000,10000,100000] [--queries 200]
        [--workdir DIR]

--workdir keeps each size's built catalog (items, index, events, trained ranker; the 100k
build takes minutes) and the base items' vectors in DIR, and later runs reuse them.

Real text: the 1k catalog is BEIR SciFact abstracts and the queries are SciFact claims; 10k adds
MovieLens titles and genres; 100k repeats those 10k vectors with small perturbations (each copy
is a distinct item, so HNSW sees 100k distinct points). Data is read from ../shared/data.

Per size: the catalog is built (BM25 included), one user gets 1,000 events and 200 others 10
each, around a few tastes each (popularity, co-visits), and a ranker trained on them from
replayed history is promoted.
Then, for each query, in one loop so that machine noise hits all alike:
  - encoder: the raw encoder on the query (Embedder.encode, no cache), the baseline;
  - GET /v1/search?q=...&k=10&timings=true, the app called as a WSGI server calls it (an
    environ as gunicorn builds one; SQLite, query cache cleared), anonymous and as the user:
    end to end, and end to end minus its embed timing ("everything but the encoder", the
    issue-9 goal: p50 <= 2 ms, p99 <= 4 ms at 100k); and, alternating, the same request
    through Flask's test client, as this bench called it before (the client costs itself);
  - the same two searches through Searcher.search in a session: took_ms minus embed.
The process is tuned as a `recsearch serve` worker tunes itself once loaded
(web.server.tune_process: a 1 ms GIL switch interval, the loaded heap frozen).
Then the API searches again with every query vector cached ("query cached"): no encoder runs,
so nothing it leaves behind (it slows the next few hundred ms of the process) is counted.
In the same loop the floor is timed: the ANN search alone (at an anonymous search's depth),
the user's one SQL read alone, and a request that does nothing (GET /healthz, both ways),
i.e. what a search pays before any logic of its own, set against the 2 ms goal; each search's
SQL read
(the user's, and an anonymous search's deletion check) is also timed through the session
itself, the way before engine.store.db.DriverStatement, alternating with the served way.
The table and JSON also give /v1/search p99 over the encoder's own p99 in the same run
("e2e_over_encoder_p99", goal <= 1.3) and, at 100k, /v1/search p99 with a user (goal <= 10 ms).
"What the goals leave" sums each iteration's floor parts (floor_anonymous: ANN, the deletions
read, the no-op request; floor_user: the user's read instead), alone and with that iteration's
encoder: the least a search could cost on this machine with no logic of its own, against the
goals; "beyond floor" is /v1/search but the encoder less that floor, per iteration: what the
search's own logic costs (and the same for the query-cached searches, query by query).
The next table splits that: the other index searches a search makes, timed alone in the same
loop at its depths (BM25 and the windows' index), and "logic", beyond floor less those: what
the search's Python costs.
Build throughput (`indexer.build` on the 1k catalog between two raw-encoder runs) is measured
first unless --throughput-items 0. --delta N rewrites N random items after each build (new
titles: re-embedded into the delta, their index rows shadowed), as a bulk update between
builds does, and measures with that delta. Prints tables and writes JSON
(default bench/results/search_latency.json).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.catalog.fields import ItemFields  # noqa: E402
from engine.catalog.items import ItemIn, embedding_text, text_hash, upsert_items  # noqa: E402
from engine.core.clock import utcnow  # noqa: E402
from engine.core.config import Settings  # noqa: E402
from engine.encoder.embedder import Embedder  # noqa: E402
from engine.index.ann.faiss import exact_top_k  # noqa: E402
from engine.index.artifact import IndexStore, write_artifact_files  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from engine.search.candidates import _OVERFETCH  # noqa: E402
from engine.search.request import SearchRequest  # noqa: E402
from engine.users.events import EventIn  # noqa: E402
from engine.users.recording import record_events  # noqa: E402
from engine.users.state import SqlState  # noqa: E402
from indexer.build import build  # noqa: E402
from indexer.train import train_from_events  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
USER = "bench-user"
USER_EVENTS = 1_000
GOAL_P50_MS, GOAL_P99_MS = 2.0, 4.0
GOAL_P99_SEARCH_MS = 10.0  # /v1/search p99 at 100k with a user and the trained ranker
GOAL_E2E_OVER_ENCODER_P99 = 1.3  # /v1/search p99 / the encoder's own p99, same run


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_ms)
    return {f"p{p}": round(float(np.percentile(ms, p)), 3) for p in (50, 95, 99)}


def scifact_items(n: int) -> list[ItemIn]:
    items = []
    with open(SHARED / "beir-scifact" / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            items.append(
                ItemIn(id=f"sf-{doc['_id']}", title=doc["title"] or doc["_id"], text=doc["text"])
            )
            if len(items) == n:
                break
    return items


def movielens_items() -> list[ItemIn]:
    with open(SHARED / "movielens-small" / "movies.csv", encoding="utf-8", newline="") as fh:
        return [
            ItemIn(
                id=f"ml-{row['movieId']}",
                title=row["title"],
                category=row["genres"].split("|")[0],
                tags=tuple(g for g in row["genres"].split("|") if g != "(no genres listed)"),
            )
            for row in csv.DictReader(fh)
        ]


def queries(n: int) -> list[str]:
    out = []
    with open(SHARED / "beir-scifact" / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            out.append(json.loads(line)["text"])  # only the text: metadata holds answers
    rng = np.random.default_rng(0)
    return [out[i] for i in rng.choice(len(out), size=min(n, len(out)), replace=False)]


def content(item: ItemIn) -> str:
    return embedding_text(item.title, item.text, item.category, item.tags)


def seed_vectors(
    settings: Settings, embedder: Embedder, items: list[ItemIn], vectors: np.ndarray
) -> None:
    """Publish a seed version holding these vectors, so `build` reuses them, not re-embeds."""
    from engine.index.ann import create_index

    store = IndexStore(settings.index_dir)
    staging = store.stage()
    index = create_index("faiss", embedder.dim, 1, settings.replace(index_type="flat"))
    manifest = {
        "version": None,
        "model": {"name": embedder.name, "dimension": embedder.dim, "normalized": True},
        "index": index.save(staging),
        "item_count": len(items),
    }
    write_artifact_files(
        staging,
        manifest=manifest,
        ids=[i.id for i in items],
        categories=[i.category for i in items],
        text_hashes=[text_hash(embedder.name, content(i)) for i in items],
        vectors=vectors,
        items=[
            ItemFields(i.title, i.category, i.tags, dict(i.attributes), i.created_at) for i in items
        ],
    )
    store.publish(staging)


def histories(ids: list[str], vectors: np.ndarray, seed: int) -> list[EventIn]:
    """USER_EVENTS events of one user over 60 days, and 10 for each of 200 others.

    Each user has a few tastes: most events fall on the 300 nearest items of one of a few
    random centre items, the rest anywhere, so histories look like users' (the trained
    ranker needs positives its first stage can find).
    """
    rng = np.random.default_rng(seed)
    now = utcnow()
    types = ["view", "click", "cart", "purchase"]
    weights = [0.6, 0.25, 0.1, 0.05]  # 5% purchases: ~50 items the user is not shown again
    users = [(USER, USER_EVENTS, 5)] + [(f"u{u}", 10, 1) for u in range(200)]
    events = []
    for user, count, tastes in users:
        near = []
        for centre in rng.choice(len(ids), tastes, replace=False):
            sims = vectors @ vectors[centre]
            near.append(np.argpartition(-sims, 300)[:300])
        for _ in range(count):
            if rng.random() < 0.8:
                row = int(rng.choice(near[int(rng.integers(tastes))]))
            else:
                row = int(rng.integers(len(ids)))
            events.append(
                EventIn(
                    user,
                    ids[row],
                    str(rng.choice(types, p=weights)),
                    now - timedelta(seconds=float(rng.uniform(60, 60 * 86_400))),
                    event_id=f"bench-{len(events)}",
                )
            )
    return events


def call_app(app: Any, path: str, params: dict[str, Any]) -> tuple[int, bytes]:
    """(status, body) of a GET to the WSGI app, called as a WSGI server calls it: an environ
    as gunicorn builds one from the request line and headers, the body iterated and closed."""
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": urlencode(params),
        "RAW_URI": f"{path}?{urlencode(params)}",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    status: list[str] = []

    def start_response(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        status.append(line)

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(status[0].split(" ", 1)[0]), body


def build_catalog(
    runtime: Runtime,
    n: int,
    items: list[ItemIn],
    vectors: np.ndarray,
    embedder: Embedder,
    delta: int = 0,
) -> dict[str, Any]:
    """Build the catalog of n items in the runtime's data dir: items, the index (reusing the
    vectors), the rewritten delta, the users' histories and a promoted ranker trained on them.
    Returns what the results report of the build (kept beside it for --workdir)."""
    settings = runtime.settings
    with runtime.session() as session:
        for start in range(0, n, 5000):
            upsert_items(session, items[start : start + 5000])
    seed_vectors(settings, embedder, items, vectors)
    with runtime.session() as session:
        report = build(runtime, session)
    assert report.reused == n, report
    delta_s = rewrite_since_build(runtime, items, delta, seed=n) if delta else 0.0

    events = histories([i.id for i in items], vectors, seed=n)
    with runtime.write_session() as session:
        for start in range(0, len(events), 1000):
            record_events(session, events[start : start + 1000], settings, runtime.vectors)
    t = time.perf_counter()
    with runtime.session() as session:
        _, train_report = train_from_events(runtime, session, events, promote=True, max_per_user=5)
    train_s = time.perf_counter() - t
    return {
        "delta_items": delta,
        "delta_embed_s": round(delta_s, 1),
        "index": report.factory,
        "params": report.params,
        "index_build_s": round(report.build_seconds, 2),
        "recall_at_10_build": report.recall_at_10,
        "ranker": {"version": train_report.version, "examples": train_report.examples},
        "train_s": round(train_s, 2),
    }


def wait_for_delta(runtime: Runtime, count: int) -> None:
    """Until the delta holds the `count` items rewritten since the build (a reused catalog:
    this process's delta re-reads them)."""
    snapshot = runtime.delta.refresh()
    while snapshot is None or snapshot.pending or snapshot.size < count:
        time.sleep(0.5)
        snapshot = runtime.delta.refresh()


def measure_size(
    n: int,
    items: list[ItemIn],
    vectors: np.ndarray,
    embedder: Embedder,
    qs: list[str],
    workdir: Path,
    delta: int = 0,
) -> dict[str, Any]:
    """One size measured; a catalog already built in workdir (its built.json written after
    the build) is reused as it is."""
    data_dir = workdir / (f"n{n}" if not delta else f"n{n}-delta{delta}")
    marker = data_dir / "built.json"
    settings = Settings(data_dir=data_dir, index_poll_s=3600)
    runtime = Runtime(settings, embedder=embedder)
    if marker.exists():
        built = json.loads(marker.read_text())
        print(f"  reusing the catalog built in {data_dir}", file=sys.stderr)
        if delta:
            wait_for_delta(runtime, delta)
    else:
        built = build_catalog(runtime, n, items, vectors, embedder, delta)
        marker.write_text(json.dumps(built, indent=1))
    artifact = runtime.searcher.artifact()
    time.sleep(settings.models_poll_s + 0.1)  # the live model follows within its poll
    version = built["ranker"]["version"]
    assert runtime.model.get().version == version, "the trained model is not live"

    from web import create_app
    from web.server import tune_process

    app = create_app(runtime=runtime, loopback=True)
    client = app.test_client()
    lean = runtime.searcher
    runtime.watch.ready()
    tune_process()  # as each `recsearch serve` worker does once it has loaded

    def api(
        q: str, user: str | None, cached: bool = False, test_client: bool = False
    ) -> tuple[float, dict[str, Any]]:
        """GET /v1/search as a WSGI server calls the app (test_client: through Flask's test
        client, which costs itself: it builds the request, keeps a cookie jar, wraps the
        response)."""
        params = {"q": q, "k": 10, "timings": "true"} | ({"user_id": user} if user else {})
        if not cached:
            embedder.clear_cache()
        if test_client:
            t = time.perf_counter()
            response = client.get("/v1/search", query_string=params)
            e2e = (time.perf_counter() - t) * 1e3
            status, body = response.status_code, response.get_json()
        else:
            t = time.perf_counter()
            status, raw = call_app(app, "/v1/search", params)
            e2e = (time.perf_counter() - t) * 1e3
            body = json.loads(raw)
        assert status == 200 and len(body["results"]) == 10, body
        return e2e, body

    def engine_call(searcher: Any, q: str, user: str | None) -> float:
        embedder.clear_cache()
        with runtime.session() as session:
            response = searcher.search(session, SearchRequest(q=q, k=10, user_id=user))
        return float(response.took_ms - response.stages_ms["embed"])

    for q in qs[:5]:  # warm up every path (first calls load indexes, compile statements)
        for user in (None, USER):
            api(q, user)
            api(q, user, test_client=True)
            engine_call(lean, q, user)

    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    # The floor: what every search here pays before any of its own logic runs, each part
    # timed alone in the same loop. The ANN search of the index (at the depth an anonymous
    # search fetches), the one SQL read of the user's state, and a request to the app that
    # does nothing (GET /healthz: Flask, the test client, the JSON response).
    fetch_k = (
        settings.candidates + _OVERFETCH
    )  # what engine.search.candidates fetches, no exclusions
    window = settings.covisit_window if settings.covisit_candidates > 0 else 0

    reads: dict[str, Callable[[SqlState], object]] = {
        # The user's read, and an anonymous search's one read (the deletions since the item
        # watch looked).
        "user_read": lambda s: s.user_with_covisits(USER, window, settings.covisit_candidates),
        "deletions_read": lambda s: s.live_items([artifact.ids[0]]),
    }

    def sql_read(name: str, through_session: bool) -> float:
        """A search's read as a search makes it (the session opened and closed included), on
        the driver's connection; through_session: by the session itself, as before (the
        baseline of engine.store.db.DriverStatement)."""
        t = time.perf_counter()
        with runtime.read_session() as session:
            if through_session:
                session.connection()  # a session that has begun reads for itself
            reads[name](SqlState(session, utcnow(), runtime.watch))
        return (time.perf_counter() - t) * 1e3

    # The other index searches a search makes beyond the floor's ANN, at the depths it makes
    # them (engine.search.candidates): BM25 and the windows' index (chunks). A user's search
    # reaches deeper by the items the user is not shown again (the purchases). (The ANN's own
    # extra depth for them costs less than this machine's noise: 66 vs 115 rows at 100k.)
    with runtime.read_session() as session:
        excluded = len(lean.prepare(session, SearchRequest(q=qs[0], user_id=USER)).context.exclude)
    want = settings.candidates
    depth = {"anonymous": (want, fetch_k), "user": (want + excluded, fetch_k + excluded)}

    def other_searches(q: str, vector: np.ndarray, who: str) -> float:
        """BM25 and the windows' index for one search, each timed alone (ms, summed)."""
        lexical_k, ann_k = depth[who]
        parts = {}
        if artifact.lexical is not None:
            t = time.perf_counter()
            artifact.lexical.search(q, lexical_k)
            parts["lexical"] = (time.perf_counter() - t) * 1e3
        if artifact.chunks is not None:
            t = time.perf_counter()
            artifact.chunks.search(vector, ann_k)
            parts["windows"] = (time.perf_counter() - t) * 1e3
        for part, ms in parts.items():
            add(f"index_{part}_{who}", ms)
        return sum(parts.values())

    qvecs = []
    for n_q, q in enumerate(qs):
        t = time.perf_counter()
        qvecs.append(embedder.encode([q])[0])
        add("encoder", (time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        artifact.ann.search(qvecs[-1], fetch_k)
        add("floor_ann", (time.perf_counter() - t) * 1e3)
        for who in ("anonymous", "user")[:: 1 if n_q % 2 else -1]:  # which first, alternating
            add(f"index_beyond_floor_{who}", other_searches(q, qvecs[-1], who))
        for through_session in (n_q % 2 == 1, n_q % 2 == 0):  # alternating which goes first
            way = "_session" if through_session else ""
            for name in reads:
                add(f"floor_{name}{way}", sql_read(name, through_session))
        t = time.perf_counter()
        assert call_app(app, "/healthz", {})[0] == 200
        add("floor_framework", (time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        add("floor_framework_test_client", (time.perf_counter() - t) * 1e3)
        for who, user in (("anonymous", None), ("user", USER)):
            # The same search through the test client (the way this bench called it before),
            # before or after the served way, alternating.
            if n_q % 2:
                add(f"api_{who}_test_client", api(q, user, test_client=True)[0])
            e2e, body = api(q, user)
            if not n_q % 2:
                add(f"api_{who}_test_client", api(q, user, test_client=True)[0])
            timings = body["timings_ms"]
            add(f"api_{who}", e2e)
            add(f"api_{who}_embed", timings["embed"])
            add(f"api_{who}_but_encoder", e2e - timings["embed"])
            for stage in ("user", "retrieve", "features", "rank"):
                add(f"api_{who}_{stage}", timings[stage])
            add(f"lean_{who}_but_encoder", engine_call(lean, q, user))

    # The same searches with every query's vector already cached, after a pause: no encoder
    # runs in this phase. Running the encoder slows what follows it in the process for a
    # while (measured here: about 2x for the next few hundred ms), which the interleaved
    # figures above include; these do not.
    for q in qs:
        embedder.encode_query(q)
    time.sleep(1.0)
    for q in qs:
        for who, user in (("anonymous", None), ("user", USER)):
            e2e, _ = api(q, user, cached=True)
            add(f"api_{who}_cached", e2e)

    # The floor of each kind of search as one figure per loop iteration (the parts above,
    # timed in the same iteration, summed): what it costs with no logic of its own. With the
    # encoder's time of that iteration added, it is the fastest such a search could be end
    # to end on this machine, whatever its code; its percentiles bound the goals from below.
    read_of = {"anonymous": "floor_deletions_read", "user": "floor_user_read"}
    for who, read in read_of.items():
        parts = [samples["floor_ann"], samples[read], samples["floor_framework"]]
        floor = [sum(p) for p in zip(*parts, strict=True)]
        samples[f"floor_{who}"] = floor
        samples[f"floor_{who}_with_encoder"] = [
            f + e for f, e in zip(floor, samples["encoder"], strict=True)
        ]
        # What the search's own logic costs: /v1/search but the encoder, less its floor.
        samples[f"beyond_floor_{who}"] = [
            b - f for b, f in zip(samples[f"api_{who}_but_encoder"], floor, strict=True)
        ]
        # The same with the query's vector cached (no encoder ran before it), query by query.
        samples[f"beyond_floor_{who}_cached"] = [
            c - f for c, f in zip(samples[f"api_{who}_cached"], floor, strict=True)
        ]
        # Less the other index searches of that iteration: what the search's Python costs.
        others = samples[f"index_beyond_floor_{who}"]
        for way in ("", "_cached"):
            samples[f"logic_{who}{way}"] = [
                b - o for b, o in zip(samples[f"beyond_floor_{who}{way}"], others, strict=True)
            ]

    xq = np.asarray(qvecs, dtype=np.float32)
    # Exact top-10 over the published vectors, in the index's own row order (sorted by id).
    _, truth = exact_top_k(xq, np.asarray(artifact.vectors()), 10)
    _, found = artifact.ann.search(xq, 10)
    query_recall = float(
        np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    )
    runtime.close()
    ms = {name: percentiles(values) for name, values in samples.items()}
    return {
        "items": n,
        **built,
        "recall_at_10_queries": round(query_recall, 4),
        "user_events": USER_EVENTS,
        "ms": ms,
        # Issue 9: end-to-end p99 <= 1.3x the encoder's own p99 in the same run.
        "e2e_over_encoder_p99": {
            who: round(ms[f"api_{who}"]["p99"] / ms["encoder"]["p99"], 3)
            for who in ("anonymous", "user")
        },
    }


def rewrite_since_build(runtime: Runtime, items: list[ItemIn], count: int, seed: int) -> float:
    """Rewrite `count` random items after the build (a bulk update): new titles, so each is
    re-embedded into the delta and its index row is shadowed. Returns the seconds until every
    one of them is searchable."""
    rng = np.random.default_rng(seed + 1)
    picked = [items[int(i)] for i in rng.choice(len(items), size=count, replace=False)]
    rewritten = [i.model_copy(update={"title": f"{i.title} (remastered)"}) for i in picked]
    t = time.perf_counter()
    with runtime.write_session() as session:
        upsert_items(session, rewritten)
    snapshot = runtime.delta.refresh()
    while snapshot is None or snapshot.pending or snapshot.size < count:
        time.sleep(0.5)
        snapshot = runtime.delta.refresh()
    return time.perf_counter() - t


def build_throughput(embedder: Embedder, items: list[ItemIn], workdir: Path) -> dict[str, Any]:
    texts = [content(i) for i in items]

    def raw() -> float:
        t = time.perf_counter()
        embedder.encode(texts)
        return len(texts) / (time.perf_counter() - t)

    before = raw()
    settings = Settings(data_dir=workdir / "throughput")
    runtime = Runtime(settings, embedder=embedder)
    with runtime.session() as session:
        upsert_items(session, items)
    with runtime.session() as session:
        t = time.perf_counter()
        report = build(runtime, session)
        build_s = time.perf_counter() - t
    runtime.close()
    after = raw()
    raw_rate = (before + after) / 2
    build_rate = len(items) / build_s
    return {
        "items": len(items),
        "raw_encoder_items_per_s": round(raw_rate, 1),
        "raw_encoder_runs": [round(before, 1), round(after, 1)],
        "build_items_per_s": round(build_rate, 1),
        "build_over_raw": round(build_rate / raw_rate, 3),
        "build_s": round(build_s, 2),
        "index": report.factory,
    }


def base_vectors_of(embedder: Embedder, base: list[ItemIn], workdir: Path | None) -> np.ndarray:
    """The base items' vectors: encoded, or read back from workdir where an earlier run with
    the same model and items saved them."""
    if workdir is None:
        return embedder.encode([content(i) for i in base])
    key = text_hash(embedder.name, "\n".join(content(i) for i in base))[:16]
    path = workdir / f"base-{key}.npy"
    if path.exists():
        return np.load(path)
    vectors = embedder.encode([content(i) for i in base])
    workdir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def catalog_of(
    n: int, base: list[ItemIn], base_vectors: np.ndarray, rng: np.random.Generator
) -> tuple[list[ItemIn], np.ndarray]:
    copies = []
    vectors = []
    for c in range(-(-n // len(base))):
        take = min(len(base), n - c * len(base))
        for item in base[:take]:
            copies.append(
                item
                if c == 0
                else ItemIn(
                    id=f"{item.id}~{c}",
                    title=f"{item.title} ({c})",
                    category=item.category,
                    tags=item.tags,
                )
            )
        v = base_vectors[:take]
        if c:
            v = v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
        vectors.append(v)
    return copies, np.vstack(vectors).astype(np.float32)


def print_tables(results: dict[str, Any]) -> None:
    fmt: Callable[[dict[str, float]], str] = lambda d: f"{d['p50']:7.2f} {d['p99']:7.2f}"  # noqa: E731
    tp = results.get("build_throughput")
    if tp:
        print(
            f"\nbuild throughput ({tp['items']} SciFact abstracts): build {tp['build_items_per_s']} items/s, "
            f"raw encoder {tp['raw_encoder_items_per_s']} items/s -> ratio {tp['build_over_raw']} (goal >= 0.95)"
        )
    print(
        "\nGET /v1/search in-process (the app called as a WSGI server calls it, SQLite), k=10,"
        " trained ranker; ms p50 p99"
    )
    for r in results["sizes"]:
        if r.get("delta_items"):
            print(
                f"  {r['items']} items: {r['delta_items']} of them rewritten since the build, "
                f"searched from the delta (embedded in {r['delta_embed_s']} s)"
            )
    header = (
        f"{'items':>7} {'index':>8} {'q-recall':>8} {'who':>9} | {'encoder':>15} | {'/v1/search':>15} | "
        f"{'but encoder':>15} | {'user':>5} {'retrieve':>7} {'features':>8} {'rank':>6} (p50) | goal p50<={GOAL_P50_MS:g} p99<={GOAL_P99_MS:g} | "
        f"{'p99/enc':>7} (<={GOAL_E2E_OVER_ENCODER_P99:g}) | {'query cached':>15}"
    )
    print(header)
    print("-" * len(header))
    for r in results["sizes"]:
        ms = r["ms"]
        for who in ("anonymous", "user"):
            but = ms[f"api_{who}_but_encoder"]
            ok = but["p50"] <= GOAL_P50_MS and but["p99"] <= GOAL_P99_MS
            print(
                f"{r['items']:>7} {r['index']:>8} {r['recall_at_10_queries']:>8.3f} {who:>9} | "
                f"{fmt(ms['encoder'])} | {fmt(ms[f'api_{who}'])} | {fmt(but)} | "
                f"{ms[f'api_{who}_user']['p50']:5.2f} "
                f"{ms[f'api_{who}_retrieve']['p50']:7.2f} {ms[f'api_{who}_features']['p50']:8.2f} "
                f"{ms[f'api_{who}_rank']['p50']:6.2f}       | {'met' if ok else 'MISSED':>22} | "
                f"{r['e2e_over_encoder_p99'][who]:7.2f} {'met' if r['e2e_over_encoder_p99'][who] <= GOAL_E2E_OVER_ENCODER_P99 else 'MISSED':>6} | "
                f"{fmt(ms[f'api_{who}_cached'])}"
            )
    for r in results["sizes"]:
        if r["items"] >= 100_000:
            p99 = r["ms"]["api_user"]["p99"]
            print(
                f"/v1/search p99 at {r['items']} items with a user: {p99:.2f} ms "
                f"(goal <= {GOAL_P99_SEARCH_MS:g}: {'met' if p99 <= GOAL_P99_SEARCH_MS else 'MISSED'})"
            )
    print(
        "\nThe floor, each part timed alone in the same loop: what a search pays before its own"
        " logic; ms p50 p99"
    )
    header = (
        f"{'items':>7} | {'ANN search':>15} | {'user SQL read':>15} | {'no-op request':>15} | "
        f"{'sum of p50s':>11} | goal p50<={GOAL_P50_MS:g} left for the rest (anon / user)"
    )
    print(header)
    print("-" * len(header))
    for r in results["sizes"]:
        ms = r["ms"]
        ann, read, app = ms["floor_ann"], ms["floor_user_read"], ms["floor_framework"]
        anon_floor = ann["p50"] + app["p50"]
        print(
            f"{r['items']:>7} | {fmt(ann)} | {fmt(read)} | {fmt(app)} | "
            f"{anon_floor + read['p50']:11.2f} | {GOAL_P50_MS - anon_floor:.2f} / "
            f"{GOAL_P50_MS - anon_floor - read['p50']:.2f}"
        )
    print(
        "\nWhat the goals leave: each search's floor (its parts summed per iteration), alone"
        " and with that iteration's encoder (the fastest it could be end to end, with no logic"
        " of its own); ms p50 p99"
    )
    header = (
        f"{'items':>7} {'who':>9} | {'floor':>15} | {'left of p50<=2 / p99<=4':>23} | "
        f"{'beyond floor':>15} | {'(query cached)':>15} | "
        f"{'encoder + floor':>15} | {'p99 goals: <=10 ms at 100k (user), <=1.3x encoder p99':>55}"
    )
    print(header)
    print("-" * len(header))
    for r in results["sizes"]:
        ms = r["ms"]
        bound = GOAL_E2E_OVER_ENCODER_P99 * ms["encoder"]["p99"]
        for who in ("anonymous", "user"):
            floor, least = ms[f"floor_{who}"], ms[f"floor_{who}_with_encoder"]
            goals = f"{least['p99']:.2f} vs {bound:.2f}"
            if who == "user" and r["items"] >= 100_000:
                goals = f"{least['p99']:.2f} vs {GOAL_P99_SEARCH_MS:g}; " + goals
            print(
                f"{r['items']:>7} {who:>9} | {fmt(floor)} | "
                f"{GOAL_P50_MS - floor['p50']:11.2f} / {GOAL_P99_MS - floor['p99']:9.2f} | "
                f"{fmt(ms[f'beyond_floor_{who}'])} | {fmt(ms[f'beyond_floor_{who}_cached'])} | "
                f"{fmt(least)} | {goals:>55}"
            )
    print(
        "\nBeyond the floor: the other index searches (each timed alone in the same loop, at the"
        " depths a search makes them: BM25 and the windows' index), and what is left, the"
        " search's own Python; ms p50 p99"
    )
    header = (
        f"{'items':>7} {'who':>9} | {'BM25':>15} | {'windows':>15} | "
        f"{'index searches':>15} | {'logic':>15} | {'(query cached)':>15}"
    )
    print(header)
    print("-" * len(header))
    none = {"p50": 0.0, "p99": 0.0}
    for r in results["sizes"]:
        ms = r["ms"]
        for who in ("anonymous", "user"):
            parts = [ms.get(f"index_{p}_{who}", none) for p in ("lexical", "windows")]
            print(
                f"{r['items']:>7} {who:>9} | {' | '.join(fmt(p) for p in parts)} | "
                f"{fmt(ms[f'index_beyond_floor_{who}'])} | {fmt(ms[f'logic_{who}'])} | "
                f"{fmt(ms[f'logic_{who}_cached'])}"
            )
    print(
        "\nA search's SQL read (session opened and closed included) on the driver's connection"
        " (served) and through the session (before); ms p50 p99"
    )
    header = (
        f"{'items':>7} | {'user, session':>15} | {'user, driver':>15} | "
        f"{'deletions, session':>18} | {'deletions, driver':>17}"
    )
    print(header)
    print("-" * len(header))
    for r in results["sizes"]:
        ms = r["ms"]
        print(
            f"{r['items']:>7} | {fmt(ms['floor_user_read_session'])} | "
            f"{fmt(ms['floor_user_read'])} | {fmt(ms['floor_deletions_read_session']):>18} | "
            f"{fmt(ms['floor_deletions_read']):>17}"
        )
    print(
        "\nThe same requests through Flask's test client (how this bench called the app before),"
        " alternating in the same loop; ms p50 p99"
    )
    header = (
        f"{'items':>7} {'who':>9} | {'test client':>15} | {'WSGI call':>15} | "
        f"{'the client itself (p50)':>23}"
    )
    print(header)
    print("-" * len(header))
    for r in results["sizes"]:
        ms = r["ms"]
        rows = [("anonymous", "api_anonymous"), ("user", "api_user"), ("no-op", "floor_framework")]
        for who, key in rows:
            client, served = ms[f"{key}_test_client"], ms[key]
            print(
                f"{r['items']:>7} {who:>9} | {fmt(client)} | {fmt(served)} | "
                f"{client['p50'] - served['p50']:23.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--throughput-items", type=int, default=1000, help="0 skips it")
    parser.add_argument(
        "--delta",
        type=int,
        default=0,
        help="items rewritten after the build, searched from the delta (a bulk update)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "search_latency.json"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep each size's built catalog (and the base vectors) here and reuse them in "
        "later runs; default a temporary folder, built afresh",
    )
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"needs the datasets in {SHARED} (BEIR SciFact, MovieLens small)")
    sizes = [int(s) for s in args.sizes.split(",")]

    embedder = Embedder(Settings())
    qs = queries(args.queries)
    print("loading and embedding base items ... ", end="", flush=True, file=sys.stderr)
    t = time.perf_counter()
    base = scifact_items(1000)
    if max(sizes) > len(base):
        base += movielens_items()
    base_vectors = base_vectors_of(embedder, base, args.workdir)
    print(f"{len(base)} in {time.perf_counter() - t:.0f}s", file=sys.stderr)

    rng = np.random.default_rng(0)
    results: dict[str, Any] = {
        "benchmark": "search_latency",
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "model": embedder.name,
        "encoder": embedder.encoder,
        "queries": len(qs),
        "goal_but_encoder_ms": {"p50": GOAL_P50_MS, "p99": GOAL_P99_MS},
        "goal_search_p99_ms_100k_user": GOAL_P99_SEARCH_MS,
        "goal_e2e_over_encoder_p99": GOAL_E2E_OVER_ENCODER_P99,
        "sizes": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.throughput_items:  # always a fresh catalog: it times a build
            results["build_throughput"] = build_throughput(
                embedder, base[: args.throughput_items], Path(tmp)
            )
        workdir = args.workdir or Path(tmp)
        for n in sizes:
            items, vectors = catalog_of(n, base, base_vectors, rng)
            print(f"measuring {n} items ...", file=sys.stderr)
            results["sizes"].append(
                measure_size(n, items, vectors, embedder, qs, workdir, args.delta)
            )

    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
