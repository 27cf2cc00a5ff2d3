"""HNSW over float16 copies of the vectors (what `hnsw` builds: HNSW32,SQfp16) against float32
ones (HNSW32, the build before) and 8-bit ones (HNSW32,SQ8): search latency, recall against
the exact top k, and the index file's size, on real embeddings.

    .venv/bin/python bench/hnsw_storage.py [--items 100000] [--queries 300] [--k 66]

The catalog is search_latency's: BEIR SciFact abstracts and MovieLens titles embedded by the
default encoder, repeated with small perturbations up to --items; queries are SciFact claims.
Each index is built by engine.index.ann.create_index as a build makes it (efConstruction and
efSearch from the settings), saved, and loaded back memory-mapped as a server loads it. Then,
query by query, every index searches alternately (one thread, k = an anonymous search's depth
by default: candidates + 16), so machine noise hits all alike. Recall@10 and @50 are against
the exact inner-product top k. Prints a table and writes JSON
(default bench/results/hnsw_storage.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from search_latency import (  # noqa: E402
    SHARED,
    catalog_of,
    content,
    movielens_items,
    queries,
    scifact_items,
)

from engine.core.config import Settings  # noqa: E402
from engine.encoder.embedder import Embedder  # noqa: E402
from engine.index.ann import create_index, load_index  # noqa: E402
from engine.index.ann.faiss import exact_top_k, faiss  # noqa: E402

FACTORIES = ("HNSW32", "HNSW32,SQfp16", "HNSW32,SQ8")  # before, served, the smaller option


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(
        np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(found, truth, strict=True)])
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=Settings().candidates + 16)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "hnsw_storage.json"
    )
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"needs the datasets in {SHARED} (BEIR SciFact, MovieLens small)")
    settings = Settings()
    embedder = Embedder(settings)
    print("embedding the base catalog ... ", end="", flush=True, file=sys.stderr)
    base = scifact_items(1000) + movielens_items()
    base_vectors = embedder.encode([content(i) for i in base])
    _, xb = catalog_of(args.items, base, base_vectors, np.random.default_rng(0))
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    xq = np.ascontiguousarray(embedder.encode(queries(args.queries)), dtype=np.float32)
    print(f"{len(xb)} items, {len(xq)} queries", file=sys.stderr)
    _, truth = exact_top_k(xq, xb, max(50, args.k))

    faiss.omp_set_num_threads(1)  # one query at a time, as a request searches
    indexes: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for factory in FACTORIES:
            t = time.perf_counter()
            index = create_index(
                "faiss", xb.shape[1], len(xb), settings.replace(index_type=factory)
            )
            index.add(xb)
            folder = Path(tmp) / factory.replace(",", "_")
            folder.mkdir()
            description = index.save(folder)
            build_s = time.perf_counter() - t
            indexes[factory] = load_index(folder, description)  # memory-mapped, as served
            rows[factory] = {
                "build_s": round(build_s, 1),
                "file_mb": round((folder / description["file"]).stat().st_size / 2**20, 1),
                "params": description["params"],
            }
            print(f"built {factory} in {build_s:.0f}s", file=sys.stderr)
        for index in indexes.values():  # warm: touch the memory map once
            for q in xq[:20]:
                index.search(q, args.k)
        samples: dict[str, list[float]] = {f: [] for f in FACTORIES}
        found: dict[str, list[np.ndarray]] = {f: [] for f in FACTORIES}
        for n, q in enumerate(xq):
            order = FACTORIES if n % 2 == 0 else FACTORIES[::-1]
            for factory in order:
                t = time.perf_counter()
                _, hits = indexes[factory].search(q, args.k)
                samples[factory].append((time.perf_counter() - t) * 1e3)
                found[factory].append(hits[0])
    for factory in FACTORIES:
        ms = np.asarray(samples[factory])
        hits = np.asarray(found[factory])
        rows[factory] |= {
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "recall_at_10": round(recall(hits, truth, 10), 4),
            "recall_at_50": round(recall(hits, truth, min(50, args.k)), 4),
        }
    before = rows["HNSW32"]["p50_ms"]
    print(
        f"\nHNSW vector storage, {len(xb)} items, {len(xq)} SciFact claims, k={args.k}, "
        "one thread, alternating; ms"
    )
    header = (
        f"{'factory':>14} | {'p50':>6} {'p99':>6} | {'x HNSW32 p50':>12} | "
        f"{'recall@10':>9} {'recall@50':>9} | {'file MB':>7} | {'build s':>7}"
    )
    print(header)
    print("-" * len(header))
    for factory in FACTORIES:
        r = rows[factory]
        print(
            f"{factory:>14} | {r['p50_ms']:6.3f} {r['p99_ms']:6.3f} | "
            f"{r['p50_ms'] / before:12.2f} | {r['recall_at_10']:9.4f} {r['recall_at_50']:9.4f} | "
            f"{r['file_mb']:7.1f} | {r['build_s']:7.1f}"
        )
    result = {
        "benchmark": "hnsw_storage",
        "items": len(xb),
        "queries": len(xq),
        "k": args.k,
        "served": "HNSW32,SQfp16",
        "baseline": "HNSW32",
        "indexes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
