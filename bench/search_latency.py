"""Search latency and build throughput at 1k, 10k and 100k items, baselines in the same run.

    .venv/bin/python bench/search_latency.py [--sizes 1000,10000,100000] [--queries 200]

Real text: the 1k catalog is BEIR SciFact abstracts and the queries are SciFact claims; 10k adds
MovieLens titles and genres; 100k repeats those 10k vectors with small perturbations (each copy
is a distinct item, so HNSW sees 100k distinct points). Data is read from ../shared/data.

Per size, in one loop, each query is timed three ways, interleaved so machine noise hits all
alike: the raw encoder (model.encode, the baseline), the ANN search alone, and GET /v1/search
end to end in-process (Flask test client, SQLite, query cache cleared). Build throughput is
`indexer.build` on the 1k catalog, between two raw-encoder runs over the same texts.
Prints a table and writes JSON (default bench/results/search_latency.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.ann.faiss import exact_top_k  # noqa: E402
from engine.catalog import (  # noqa: E402
    ItemIn,
    embedding_text,
    text_hash,  # noqa: E402
    upsert_items,
)
from engine.config import Settings  # noqa: E402
from engine.embedder import Embedder  # noqa: E402
from engine.index_store import IndexStore, write_artifact_files  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from indexer.build import build  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
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
    from engine.ann import create_index

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
    )
    store.publish(staging)


def measure_size(
    n: int,
    items: list[ItemIn],
    vectors: np.ndarray,
    embedder: Embedder,
    qs: list[str],
    workdir: Path,
) -> dict[str, Any]:
    settings = Settings(data_dir=workdir / f"n{n}", index_poll_s=3600)
    runtime = Runtime(settings, embedder=embedder)
    with runtime.session() as session:
        for start in range(0, n, 5000):
            upsert_items(session, items[start : start + 5000])
    seed_vectors(settings, embedder, items, vectors)
    with runtime.session() as session:
        report = build(runtime, session)
    assert report.reused == n, report
    artifact = runtime.searcher.artifact()

    from web import create_app

    client = create_app(runtime=runtime, loopback=True).test_client()
    client.get("/v1/search?q=warm+up&k=10")
    enc, ann, e2e, qvecs = [], [], [], []
    for q in qs:
        t = time.perf_counter()
        qv = embedder.model.encode(
            q, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        enc.append(time.perf_counter() - t)
        qvecs.append(qv)
        t = time.perf_counter()
        artifact.ann.search(qv, 26)
        ann.append(time.perf_counter() - t)
        embedder.clear_cache()
        t = time.perf_counter()
        response = client.get("/v1/search", query_string={"q": q, "k": 10})
        e2e.append(time.perf_counter() - t)
        assert response.status_code == 200 and len(response.get_json()["results"]) == 10
    xq = np.asarray(qvecs, dtype=np.float32)
    # Exact top-10 over the published vectors, in the index's own row order (sorted by id).
    _, truth = exact_top_k(xq, np.asarray(artifact.vectors()), 10)
    _, found = artifact.ann.search(xq, 10)
    query_recall = float(
        np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    )
    runtime.close()
    row = {
        "items": n,
        "index": report.factory,
        "params": report.params,
        "index_build_s": round(report.build_seconds, 2),
        "recall_at_10_build": report.recall_at_10,
        "recall_at_10_queries": round(query_recall, 4),
        "encoder_ms": percentiles(enc),
        "ann_ms": percentiles(ann),
        "search_e2e_ms": percentiles(e2e),
    }
    row["e2e_p99_over_encoder_p99"] = round(
        row["search_e2e_ms"]["p99"] / row["encoder_ms"]["p99"], 3
    )
    return row


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--throughput-items", type=int, default=1000)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "search_latency.json"
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
    base_vectors = embedder.encode([content(i) for i in base])
    print(f"{len(base)} in {time.perf_counter() - t:.0f}s", file=sys.stderr)

    rng = np.random.default_rng(0)
    results: dict[str, Any] = {
        "benchmark": "search_latency",
        "machine": {
            "host": platform.node(),
            "cpus": __import__("os").cpu_count(),
            "python": platform.python_version(),
        },
        "model": embedder.name,
        "queries": len(qs),
        "sizes": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results["build_throughput"] = build_throughput(
            embedder, base[: args.throughput_items], workdir
        )
        for n in sizes:
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
            print(f"measuring {n} items ...", file=sys.stderr)
            results["sizes"].append(
                measure_size(
                    n, copies, np.vstack(vectors).astype(np.float32), embedder, qs, workdir
                )
            )

    tp = results["build_throughput"]
    print()
    print(
        f"build throughput ({tp['items']} SciFact abstracts): build {tp['build_items_per_s']} items/s, "
        f"raw encoder {tp['raw_encoder_items_per_s']} items/s -> ratio {tp['build_over_raw']} (goal >= 0.8)"
    )
    print()
    header = f"{'items':>7} {'index':>8} {'recall':>7} {'q-recall':>8} | {'encoder p50/p95/p99':>21} | {'ANN p50/p95/p99':>21} | {'/v1/search p50/p95/p99':>23} | e2e/enc p99"
    print(header)
    print("-" * len(header))
    for r in results["sizes"]:
        fmt = lambda d: f"{d['p50']:6.2f} {d['p95']:6.2f} {d['p99']:6.2f}"  # noqa: E731
        print(
            f"{r['items']:>7} {r['index']:>8} {r['recall_at_10_build']:>7.3f} {r['recall_at_10_queries']:>8.3f} | "
            f"{fmt(r['encoder_ms']):>21} | {fmt(r['ann_ms']):>21} | {fmt(r['search_e2e_ms']):>23} | "
            f"{r['e2e_p99_over_encoder_p99']:.2f} (goal <= 1.5)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
