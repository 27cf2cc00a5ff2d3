"""Encoder backends side by side: torch, onnx and onnx-int8 on all-MiniLM-L6-v2 (or RECSEARCH_MODEL).

    .venv/bin/python bench/encoders.py [--queries 300] [--rounds 5] [--threads 0] [--no-ndcg]

In one run, interleaved so machine noise hits every backend alike:
- one query: encode_query with the cache cleared, on SciFact claims, backends in rotating
  order per query; p50 / p99 in ms;
- batches of 64: short texts (SciFact claims) and passages (SciFact title + abstract, as a
  build embeds them), each round timing every backend on the same texts; items/s.
Then, per backend, SciFact dense NDCG@10 on the test qrels: the whole corpus (5,183 abstracts)
encoded by that backend, exact inner-product search with its own query vectors, and the
cosine of its corpus vectors to torch's. Data is read from ../shared/data/beir-scifact.
Prints a table and writes JSON (default bench/results/encoders.json). ONNX exports are cached
in --data-dir (default var), so a second run starts in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.catalog.items import embedding_text  # noqa: E402
from engine.core.config import Settings  # noqa: E402
from engine.encoder.embedder import Embedder  # noqa: E402
from engine.encoder.onnx_encoder import available_cores  # noqa: E402
from engine.index.ann.faiss import exact_top_k  # noqa: E402
from engine.ranking.metrics import ndcg_at_k  # noqa: E402
from indexer.datasets import beir_items, beir_qrels, beir_queries  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "beir-scifact"
BACKENDS = ("torch", "onnx", "onnx-int8")


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {f"p{p}": round(float(np.percentile(ms, p)), 2) for p in (50, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=300, help="one-query samples per backend")
    parser.add_argument("--rounds", type=int, default=5, help="batch rounds per text kind")
    parser.add_argument("--batch-texts", type=int, default=256, help="texts per batch round")
    parser.add_argument("--threads", type=int, default=0, help="0: the cores this process may use")
    parser.add_argument("--data-dir", type=Path, default=Path("var"))
    parser.add_argument("--no-ndcg", action="store_true", help="skip the corpus encodings")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "encoders.json")
    args = parser.parse_args()
    threads = args.threads or available_cores()

    base = Settings.from_env().replace(
        data_dir=args.data_dir, device="cpu", encoder_threads=threads
    )
    started = time.perf_counter()
    load_at_start = list(os.getloadavg())  # 2 shared cores: other work moves every figure
    embedders: dict[str, Embedder] = {}
    for backend in BACKENDS:
        t = time.perf_counter()
        embedders[backend] = Embedder(base.replace(encoder=backend))
        print(f"loaded {backend} in {time.perf_counter() - t:.1f} s", flush=True)

    queries = beir_queries(SCIFACT)
    claims = list(queries.values())
    corpus = beir_items(SCIFACT)
    passages = [embedding_text(i.title, i.text, i.category, list(i.tags)) for i in corpus]
    rng = np.random.default_rng(0)

    # Warm every session and allocator before timing.
    for embedder in embedders.values():
        embedder.encode(claims[:64] + passages[:64])
        embedder.clear_cache()

    one_query: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for n, text in enumerate(claims[: args.queries]):
        for backend in BACKENDS[n % 3 :] + BACKENDS[: n % 3]:  # rotate who goes first
            embedder = embedders[backend]
            embedder.clear_cache()
            t = time.perf_counter()
            embedder.encode_query(text)
            one_query[backend].append(time.perf_counter() - t)

    batch: dict[str, dict[str, float]] = {b: {} for b in BACKENDS}
    for kind, pool in (("short", claims), ("passages", passages)):
        seconds = dict.fromkeys(BACKENDS, 0.0)
        for r in range(args.rounds):
            texts = [pool[i] for i in rng.choice(len(pool), args.batch_texts, replace=False)]
            for backend in BACKENDS[r % 3 :] + BACKENDS[: r % 3]:
                t = time.perf_counter()
                embedders[backend].encode(texts)
                seconds[backend] += time.perf_counter() - t
        for backend in BACKENDS:
            batch[backend][kind] = round(args.rounds * args.batch_texts / seconds[backend], 1)

    quality: dict[str, dict[str, Any]] = {}
    if not args.no_ndcg:
        qrels = beir_qrels(SCIFACT, "test")
        test_ids = sorted(qrels)
        doc_ids = [item.id for item in corpus]
        reference: np.ndarray | None = None
        for backend in BACKENDS:
            embedder = embedders[backend]
            t = time.perf_counter()
            doc_vectors = embedder.encode(passages)
            corpus_s = time.perf_counter() - t
            query_vectors = np.stack([embedder.encode_query(queries[q]) for q in test_ids])
            _, rows = exact_top_k(query_vectors, doc_vectors, 10)
            ndcg = np.mean(
                [
                    ndcg_at_k([doc_ids[r] for r in ranked], qrels[q], 10)
                    for q, ranked in zip(test_ids, rows, strict=True)
                ]
            )
            entry: dict[str, Any] = {
                "ndcg_at_10": round(float(ndcg), 4),
                "corpus_items_per_s": round(len(passages) / corpus_s, 1),
            }
            if reference is None:
                reference = doc_vectors
            else:
                cos = (doc_vectors * reference).sum(axis=1)
                entry["corpus_cosine_to_torch"] = {
                    "mean": round(float(cos.mean()), 5),
                    "min": round(float(cos.min()), 5),
                }
            quality[backend] = entry
            print(f"{backend}: NDCG@10 {entry['ndcg_at_10']}", flush=True)

    results: dict[str, Any] = {
        "model": base.model_name(),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_at_start, "end": list(os.getloadavg())},
        "host": platform.node(),
        "queries": args.queries,
        "batch": {"size": base.embed_batch_size, "texts": args.batch_texts, "rounds": args.rounds},
        "wall_s": round(time.perf_counter() - started, 1),
        "backends": {},
    }
    for backend in BACKENDS:
        check = embedders[backend].check
        results["backends"][backend] = {
            "one_query_ms": percentiles_ms(one_query[backend]),
            "batch_items_per_s": batch[backend],
            **quality.get(backend, {}),
            "probe_check": None
            if check is None
            else {"mean_cosine": check.mean_cosine, "min_cosine": check.min_cosine},
        }

    torch_row = results["backends"]["torch"]
    print(
        f"\n{'backend':<10} {'query p50':>9} {'p99':>7} {'short/s':>9} {'×torch':>6} "
        f"{'passages/s':>10} {'×torch':>6} {'NDCG@10':>8} {'cos mean':>9} {'cos min':>8}"
    )
    for backend, row in results["backends"].items():
        q, b = row["one_query_ms"], row["batch_items_per_s"]
        cos = row.get("corpus_cosine_to_torch", {"mean": 1.0, "min": 1.0})
        print(
            f"{backend:<10} {q['p50']:>7.2f}ms {q['p99']:>5.2f}ms {b['short']:>9.1f} "
            f"{b['short'] / torch_row['batch_items_per_s']['short']:>5.2f}× "
            f"{b['passages']:>10.1f} "
            f"{b['passages'] / torch_row['batch_items_per_s']['passages']:>5.2f}× "
            f"{row.get('ndcg_at_10', float('nan')):>8.4f} {cos['mean']:>9.5f} {cos['min']:>8.5f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
