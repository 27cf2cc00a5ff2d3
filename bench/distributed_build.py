"""A build's embedding three ways on SciFact abstracts: in-process, a 2-process pool, Ray.

    .venv/bin/python bench/distributed_build.py [--texts 256] [--rounds 3] [--data-dir var]

In one run, interleaved so machine noise hits every way alike (the order rotates each round,
and each round's texts, drawn at random from the 5,183 SciFact title + abstract passages as a
build embeds them, are the same for all three):
- in-process: the build's own Embedder (RECSEARCH_ENCODER_THREADS=0: every core), loaded once
  before the rounds as a build's runtime holds it;
- process pool: multiprocessing (spawn) with 2 processes, each an Embedder with one thread,
  shards of whole batches sent longest texts first; started anew each round, as a build would;
- ray: indexer.ray_embedding.RayEmbedding, the code `build --ray` runs, with 2 actors on a
  one-node cluster of 2 CPUs on 127.0.0.2 (tests/ray_cluster.py), started once; each round
  connects, starts its actors, embeds, disconnects, as a build does.
Each way reports items/s end to end (start included), the seconds until its first vectors came
back, and items/s after them (the steady rate), and its largest difference to the in-process
vectors. Prints a table and writes JSON (default bench/results/distributed_build.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.catalog.items import embedding_text  # noqa: E402
from engine.core.config import Settings  # noqa: E402
from engine.encoder.embedder import Embedder  # noqa: E402
from indexer.datasets import beir_items  # noqa: E402
from indexer.ray_embedding import RayEmbedding  # noqa: E402
from tests import ray_cluster  # noqa: E402

SCIFACT = ROOT.parent / "shared" / "data" / "beir-scifact"
WAYS = ("in-process", "process pool", "ray")
WORKERS = 2  # this machine's cores: workers × encoder threads ≤ cores

_worker_embedder: Embedder | None = None


def _start_worker(settings: Settings) -> None:
    global _worker_embedder
    _worker_embedder = Embedder(settings)


def _encode_shard(shard: tuple[list[int], list[str]]) -> tuple[list[int], np.ndarray]:
    rows, texts = shard
    assert _worker_embedder is not None
    return rows, _worker_embedder.encode(texts)


class Timed:
    """Progress for one encode: when the first vectors came back, and how many."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_s: float | None = None
        self.first_items = 0

    def __call__(self, n: int) -> None:
        if self.first_s is None:
            self.first_s = time.perf_counter() - self.started
            self.first_items = n


def in_process(embedder: Embedder) -> Callable[[Sequence[str], Timed], np.ndarray]:
    return lambda texts, timed: embedder.encode(texts, progress=timed)


def process_pool(settings: Settings, dim: int) -> Callable[[Sequence[str], Timed], np.ndarray]:
    def encode(texts: Sequence[str], timed: Timed) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        size = settings.embed_batch_size * max(
            1, len(texts) // settings.embed_batch_size // (WORKERS * 4)
        )
        shards = [
            (order[s : s + size], [texts[i] for i in order[s : s + size]])
            for s in range(0, len(order), size)
        ]
        out = np.empty((len(texts), dim), dtype=np.float32)
        context = multiprocessing.get_context("spawn")  # no onnxruntime state forked
        with context.Pool(WORKERS, _start_worker, (settings,)) as pool:
            for rows, vectors in pool.imap_unordered(_encode_shard, shards):
                out[rows] = vectors
                timed(len(rows))
        return out

    return encode


def on_ray(settings: Settings, embedder: Embedder) -> Callable[[Sequence[str], Timed], np.ndarray]:
    def encode(texts: Sequence[str], timed: Timed) -> np.ndarray:
        return RayEmbedding(settings, embedder).encode(texts, timed)

    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=256, help="passages per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("var"))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "distributed_build.json"
    )
    args = parser.parse_args()
    if not (SCIFACT / "corpus.jsonl").exists():
        sys.exit(f"needs BEIR SciFact in {SCIFACT} (see shared/data/README.md)")
    reason = ray_cluster.available()
    if reason:
        sys.exit(f"needs Ray: {reason}")

    started = time.perf_counter()
    load_at_start = list(os.getloadavg())  # 2 shared cores: other work moves every figure
    base = Settings.from_env().replace(data_dir=args.data_dir.resolve(), device="cpu")
    embedder = Embedder(base)  # exports to ONNX into --data-dir once; the others read it
    passages = [
        embedding_text(i.title, i.text, i.category, list(i.tags)) for i in beir_items(SCIFACT)
    ]
    rng = np.random.default_rng(0)

    cluster = ray_cluster.start(nodes=1, cpus_per_node=WORKERS)
    try:
        with cluster.driver_env():
            ways = {
                "in-process": in_process(embedder),
                "process pool": process_pool(base.replace(encoder_threads=1), embedder.dim),
                "ray": on_ray(
                    base.replace(ray_address=cluster.address, ray_actors=WORKERS), embedder
                ),
            }
            embedder.encode(passages[:64])  # warm the in-process session
            samples: dict[str, list[dict[str, float]]] = {w: [] for w in WAYS}
            for r in range(args.rounds):
                texts = [passages[i] for i in rng.choice(len(passages), args.texts, replace=False)]
                results: dict[str, np.ndarray] = {}
                for way in WAYS[r % 3 :] + WAYS[: r % 3]:  # rotate who goes first
                    timed = Timed()
                    results[way] = ways[way](texts, timed)
                    total_s = time.perf_counter() - timed.started
                    first_s = timed.first_s or total_s
                    samples[way].append(
                        {
                            "total_s": total_s,
                            "first_s": first_s,
                            "steady_items": len(texts) - timed.first_items,
                            "steady_s": total_s - first_s,
                        }
                    )
                    print(f"round {r + 1} {way}: {len(texts) / total_s:.1f} items/s", flush=True)
                reference = results["in-process"]
                for way in WAYS:
                    diff = float(np.abs(results[way] - reference).max())
                    samples[way][-1]["max_abs_diff"] = diff
    finally:
        cluster.stop()

    results_json: dict[str, Any] = {
        "model": base.model_name(),
        "encoder": base.encoder,
        "cpu_count": os.cpu_count(),
        "workers": WORKERS,
        "load_average": {"start": load_at_start, "end": list(os.getloadavg())},
        "host": platform.node(),
        "texts_per_round": args.texts,
        "rounds": args.rounds,
        "batch_size": base.embed_batch_size,
        "wall_s": round(time.perf_counter() - started, 1),
        "ways": {},
    }
    for way in WAYS:
        rows = samples[way]
        total = sum(s["total_s"] for s in rows)
        steady_items = sum(s["steady_items"] for s in rows)
        steady_s = sum(s["steady_s"] for s in rows)
        results_json["ways"][way] = {
            "items_per_s": round(args.texts * len(rows) / total, 2),
            "first_vectors_s": round(float(np.median([s["first_s"] for s in rows])), 2),
            "steady_items_per_s": round(steady_items / steady_s, 2) if steady_s > 0 else None,
            "max_abs_diff_to_in_process": max(s["max_abs_diff"] for s in rows),
            "rounds": rows,
        }

    print(
        f"\n{args.texts} SciFact passages × {args.rounds} rounds, {WORKERS} cores "
        f"(load {load_at_start[0]:.1f} → {os.getloadavg()[0]:.1f})"
    )
    print(f"{'way':<14} {'items/s':>8} {'first vectors':>14} {'steady items/s':>15} {'max |Δ|':>9}")
    for way, row in results_json["ways"].items():
        steady = row["steady_items_per_s"]
        print(
            f"{way:<14} {row['items_per_s']:>8.1f} {row['first_vectors_s']:>13.1f}s "
            f"{steady if steady is not None else float('nan'):>15.1f} "
            f"{row['max_abs_diff_to_in_process']:>9.1e}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results_json, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
