"""FAISS vs Milvus Lite vs a real Milvus server (2.3.5 standalone, at each consistency
level) on one catalog: build time (index + recall, embedding excluded), measured recall@10,
and query latency of the ANN call alone and of a whole search, with the stores interleaved
query by query so machine noise hits all alike.

The server is started here on loopback (tests/milvus_server.py: the `milvus` package) and
stopped by its PID; --no-server leaves it out. Its rows are one collection searched at
Strong, Bounded, Session and Eventually: the level is set on each row's loaded index.

    .venv/bin/python bench/vector_store.py [--catalog data/catalog.jsonl] [--index-type flat]
        [--queries 300]
    .venv/bin/python bench/vector_store.py --synthetic 20000 [--index-type hnsw]

The catalog is embedded once (by the FAISS build); the Milvus build reuses those vectors.
--synthetic N skips the catalog and the encoder: N clustered unit vectors (dim 384, like
MiniLM's) go through each backend's index alone (create, add, measured recall, search_ids).
Prints a table and writes JSON (default bench/results/vector_store.json, and
vector_store_synthetic.json with --synthetic).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.core.config import Settings  # noqa: E402
from engine.index.ann.milvus import MilvusIndex  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from engine.search.request import SearchRequest  # noqa: E402
from indexer.build import build  # noqa: E402
from indexer.ingest import ingest  # noqa: E402


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


LEVELS = ("Strong", "Bounded", "Session", "Eventually")


def start_server(work: Path, wanted: bool) -> Any:
    """A Milvus server for the server rows, or None (not wanted, or not installed)."""
    if not wanted:
        return None
    from tests import milvus_server

    why = milvus_server.available()
    if why:
        print(f"no server rows: {why}")
        return None
    t0 = time.perf_counter()
    server = milvus_server.start(work / "milvus-server")
    print(
        f"Milvus {server.version} server at {server.uri} (pid {server.pid}), "
        f"healthy in {time.perf_counter() - t0:.1f} s"
    )
    return server


def store_settings(work: Path, store: str, index_type: str, server: Any) -> Settings:
    backend = "faiss" if store == "faiss" else "milvus"
    uri = server.uri if store.startswith("server") else str(work / "milvus.db")
    return Settings(
        data_dir=work / store,
        vector_store=backend,
        milvus_uri=uri,
        index_type=index_type,
        index_poll_s=3600.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", type=Path, default=ROOT / "data" / "catalog.jsonl")
    parser.add_argument("--index-type", default="flat")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--synthetic", type=int, default=0, help="N vectors, no catalog")
    parser.add_argument("--no-server", action="store_true", help="FAISS and Milvus Lite only")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default bench/results/vector_store.json (vector_store_synthetic.json with"
        " --synthetic), so one mode's run does not overwrite the other's",
    )
    args = parser.parse_args()
    if args.out is None:
        name = "vector_store_synthetic.json" if args.synthetic else "vector_store.json"
        args.out = ROOT / "bench" / "results" / name
    if args.synthetic:
        synthetic(args)
        return

    work = Path(tempfile.mkdtemp(prefix="vector-store-bench-"))
    runtimes: dict[str, Runtime] = {}
    builds: dict[str, Any] = {}
    server = start_server(work, not args.no_server)
    stores = ["faiss", "lite"] + ([f"server-{lvl.lower()}" for lvl in LEVELS] if server else [])
    try:
        for store in stores:
            settings = store_settings(work, store, args.index_type, server)
            built = store in ("faiss", "lite", "server-strong")
            # Milvus reuses the FAISS build's vectors (embed once); the other server rows
            # serve the server-strong row's version (one collection, four levels).
            source = "faiss" if built else "server-strong"
            if store != "faiss":
                shutil.copytree(runtimes[source].settings.index_dir, settings.index_dir)
            embedder = runtimes["faiss"].embedder if runtimes else None
            runtime = Runtime(settings, embedder=embedder)
            runtimes[store] = runtime
            with runtime.write_session() as session:
                ingest(runtime, session, args.catalog)
            if built:
                with runtime.session() as session:
                    report = build(runtime, session)
                builds[store] = {
                    "items": report.item_count,
                    "factory": report.factory,
                    "index_and_recall_s": round(report.build_seconds - report.embed_seconds, 3),
                    "recall_at_10": report.recall_at_10,
                }
            else:
                builds[store] = builds["server-strong"]
            if store.startswith("server"):
                ann = runtime.live.get().ann
                assert isinstance(ann, MilvusIndex)
                ann.consistency = LEVELS[[f"server-{x.lower()}" for x in LEVELS].index(store)]

        artifacts = {s: r.live.get() for s, r in runtimes.items()}
        vectors = np.asarray(artifacts["faiss"].vectors())
        rng = np.random.default_rng(0)
        rows = rng.choice(len(vectors), size=min(args.queries, len(vectors)), replace=False)
        texts = [artifacts["faiss"].items[r].title for r in rows]  # type: ignore[index]
        ann: dict[str, list[float]] = {s: [] for s in runtimes}
        whole: dict[str, list[float]] = {s: [] for s in runtimes}
        retrieve: dict[str, list[float]] = {s: [] for s in runtimes}
        same_top10 = 0
        for row, text in zip(rows, texts, strict=True):
            found = {}
            for store, artifact in artifacts.items():
                t0 = time.perf_counter()
                found[store] = [i for i, _ in artifact.ann.search_ids(vectors[row], 10)]
                ann[store].append(time.perf_counter() - t0)
            same_top10 += all(found["faiss"] == f for f in found.values())
            for store, runtime in runtimes.items():
                with runtime.session() as session:
                    response = runtime.searcher.search(
                        session, SearchRequest(q=text, k=10, timings=True)
                    )
                # The encoder is left out: the first store's search fills the query cache.
                whole[store].append((response.took_ms - response.timings_ms["embed"]) / 1000)
                retrieve[store].append(response.timings_ms["retrieve"] / 1000)
        result = {
            "catalog": str(args.catalog),
            "index_type": args.index_type,
            "queries": len(rows),
            "same_top10_ids": same_top10,
            "stores": {
                s: {
                    **builds[s],
                    "search_ids": percentiles(ann[s]),
                    "retrieve_stage": percentiles(retrieve[s]),
                    "search_minus_encoder": percentiles(whole[s]),
                }
                for s in runtimes
            },
        }
    finally:
        for runtime in runtimes.values():
            runtime.close()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"{result['catalog']}: {builds['faiss']['items']} items, {args.index_type}")
    print(
        "store              index+recall s  recall@10  search_ids p50/p99 ms  retrieve stage"
        "  search-encoder"
    )
    for store, r in result["stores"].items():
        print(
            f"{store:18} {r['index_and_recall_s']:14.3f}  {r['recall_at_10']:9.4f}  "
            f"{r['search_ids']['p50_ms']:10.2f}/{r['search_ids']['p99_ms']:6.2f}  "
            f"{r['retrieve_stage']['p50_ms']:6.2f}/{r['retrieve_stage']['p99_ms']:6.2f}  "
            f"{r['search_minus_encoder']['p50_ms']:6.2f}/{r['search_minus_encoder']['p99_ms']:6.2f}"
        )
    print(f"same top-10 ids in every store: {same_top10}/{len(rows)} queries")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


def synthetic(args: argparse.Namespace) -> None:
    from engine.index.ann import RowLabels, create_index
    from indexer.recall import measure_recall

    n, dim = args.synthetic, 384
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    xb = centres[rng.integers(0, 50, n)] + 0.4 * rng.standard_normal((n, dim)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    labels = RowLabels([f"i{i}" for i in range(n)], [f"c{i % 8}" for i in range(n)])
    work = Path(tempfile.mkdtemp(prefix="vector-store-bench-"))
    server = start_server(work, not args.no_server)
    try:
        indexes = {}
        print(f"{n} synthetic vectors, dim {dim}, {args.index_type}")
        rows = rng.choice(n, size=min(args.queries, n), replace=False)
        for store in ["faiss", "lite"] + (["server"] if server else []):
            settings = store_settings(work, store, args.index_type, server)
            t0 = time.perf_counter()
            index = create_index(settings.vector_store, dim, n, settings, labels)
            for lo in range(0, n, 10_000):
                index.add(xb[lo : lo + 10_000])
            recall = measure_recall(index, xb, 1_000)  # a Milvus index flushes, indexes first
            add_s = time.perf_counter() - t0
            index.save(work)
            indexes[store] = (index, add_s, recall)
        rows_of = {"faiss": [("faiss", None)], "lite": [("lite", None)]}
        rows_of["server"] = [(f"server-{lvl.lower()}", lvl) for lvl in LEVELS]
        names = [name for store in indexes for name, _ in rows_of[store]]
        lat: dict[str, list[float]] = {s: [] for s in names}
        lat_cat: dict[str, list[float]] = {s: [] for s in names}
        for row in rows:
            for store, (index, _, _) in indexes.items():
                for name, level in rows_of[store]:
                    if level is not None:
                        assert isinstance(index, MilvusIndex)
                        index.consistency = level
                    t0 = time.perf_counter()
                    index.search_ids(xb[row], 10)
                    lat[name].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    index.search_ids(xb[row], 10, category="c3")
                    lat_cat[name].append(time.perf_counter() - t0)
        result: dict[str, Any] = {
            "synthetic": n,
            "dim": dim,
            "index_type": args.index_type,
            "queries": len(rows),
            "stores": {},
        }
        print(
            "store              add+index+recall s  recall@10  search_ids p50/p99 ms"
            "  with category p50/p99 ms"
        )
        for store, (index, add_s, recall) in indexes.items():
            for name, _ in rows_of[store]:
                a, c = percentiles(lat[name]), percentiles(lat_cat[name])
                print(
                    f"{name:18} {add_s:18.2f}  {recall:9.4f}  {a['p50_ms']:10.2f}/"
                    f"{a['p99_ms']:6.2f}  {c['p50_ms']:10.2f}/{c['p99_ms']:6.2f}"
                )
                result["stores"][name] = {
                    "index": index.description,
                    "add_index_recall_s": round(add_s, 3),
                    "recall_at_10": recall,
                    "search_ids": a,
                    "search_ids_with_category": c,
                }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
