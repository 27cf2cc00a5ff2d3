"""Offline evaluation through the real engine, with honest baselines measured in the same run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.ann.faiss import exact_top_k
from engine.catalog import upsert_items
from engine.metrics import ndcg_at_k, recall_at_k
from engine.runtime import Runtime
from engine.search import Searcher, SearchRequest
from indexer.build import build
from indexer.datasets import beir_items, beir_qrels, beir_queries
from indexer.progress import Progress, no_progress
from indexer.train import Judgment, train_from_judgments

log = logging.getLogger(__name__)

DEPTH = 100


def import_beir(runtime: Runtime, folder: Path) -> int:
    """Upsert a BEIR corpus as catalog items; returns how many items changed."""
    items = beir_items(folder)
    changed = 0
    with runtime.write_session() as session:
        for start in range(0, len(items), 1000):
            changed += upsert_items(session, items[start : start + 1000]).changed
    return changed


def _minmax(values: np.ndarray) -> np.ndarray:
    spread = float(values.max() - values.min()) if values.size else 0.0
    return (values - values.min()) / spread if spread > 1e-12 else np.zeros_like(values)


def evaluate_beir(
    runtime: Runtime, folder: Path, *, promote: bool = False, progress: Progress = no_progress
) -> dict[str, Any]:
    """NDCG@10 and Recall@100 on the test split for dense (exact), dense_ann (the published
    index), lexical (BM25), hybrid (min-max fusion over the engine's candidates) and reranked
    (the sigmoid ranker trained on the train split's judgments; test judgments are only read
    to score)."""
    started = time.perf_counter()
    import_beir(runtime, folder)
    with runtime.session() as session:
        build_report = build(runtime.settings, session, runtime.embedder, progress, if_stale=True)
    queries = beir_queries(folder)
    train_qrels = beir_qrels(folder, "train")
    test_qrels = beir_qrels(folder, "test")

    # Both stages look 100 deep, the depth Recall@100 measures.
    deep = runtime.settings.replace(candidates=DEPTH, lexical_candidates=DEPTH)
    searcher = Searcher(deep, runtime.embedder, runtime.live, runtime.vectors)
    t = time.perf_counter()
    judgments = [
        Judgment(queries[q], doc, grade)
        for q, docs in train_qrels.items()
        if q in queries
        for doc, grade in docs.items()
    ]
    ranker, train_report = train_from_judgments(
        runtime, judgments, promote=promote, progress=progress, searcher=searcher
    )
    train_s = time.perf_counter() - t

    artifact = runtime.searcher.artifact()
    vectors = np.asarray(artifact.vectors())
    test_ids = [q for q in test_qrels if q in queries]
    runs: dict[str, list[list[str]]] = {
        m: [] for m in ("dense", "dense_ann", "lexical", "hybrid", "reranked")
    }
    with runtime.session() as session:
        for n, qid in enumerate(test_ids):
            text = queries[qid]
            qv = runtime.embedder.encode_query(text)
            _, exact = exact_top_k(qv[None, :], vectors, DEPTH)
            runs["dense"].append([artifact.ids[r] for r in exact[0]])
            _, approx = artifact.ann.search(qv, DEPTH)
            runs["dense_ann"].append([artifact.ids[r] for r in approx[0] if r >= 0])
            lexical = artifact.lexical
            lexical_rows: list[int] = (
                lexical.search(text, DEPTH)[0].tolist() if lexical is not None else []
            )
            runs["lexical"].append([artifact.ids[r] for r in lexical_rows])

            stage = searcher.first_stage(session, SearchRequest(q=text, k=DEPTH))
            ids = [c.item_id for c in stage.candidates]
            sims = stage.x[:, stage.names.index("query_sim")]
            bm25 = np.array([c.lexical_score for c in stage.candidates])
            fused = _minmax(sims) + _minmax(bm25)
            runs["hybrid"].append([ids[i] for i in np.argsort(-fused, kind="stable")])
            logits = ranker.aligned(stage.names).logits(stage.x)
            runs["reranked"].append([ids[i] for i in np.argsort(-logits, kind="stable")])
            progress("evaluate", n + 1, len(test_ids))

    metrics = {}
    for method, ranked_lists in runs.items():
        metrics[method] = {
            "ndcg@10": round(
                float(
                    np.mean(
                        [
                            ndcg_at_k(r, test_qrels[q], 10)
                            for r, q in zip(ranked_lists, test_ids, strict=True)
                        ]
                    )
                ),
                4,
            ),
            "recall@100": round(
                float(
                    np.mean(
                        [
                            recall_at_k(r, set(test_qrels[q]), 100)
                            for r, q in zip(ranked_lists, test_ids, strict=True)
                        ]
                    )
                ),
                4,
            ),
        }
    return {
        "dataset": f"beir:{folder.name}",
        "split": "test",
        "queries": len(test_ids),
        "documents": len(artifact.ids),
        "metrics": metrics,
        "index": {
            "version": build_report.version,
            "factory": build_report.factory,
            "params": build_report.params,
        },
        "model": {"version": train_report.version, "promoted": promote, **train_report.to_dict()},
        "train_seconds": round(train_s, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
    }


def print_table(result: dict[str, Any]) -> str:
    metric_names = sorted({m for v in result["metrics"].values() for m in v})
    lines = [f"{result['dataset']} ({result.get('queries', '?')} queries)"]
    lines.append(f"{'method':<12}" + "".join(f"{m:>12}" for m in metric_names))
    for method, values in result["metrics"].items():
        lines.append(
            f"{method:<12}" + "".join(f"{values.get(m, float('nan')):>12.4f}" for m in metric_names)
        )
    return "\n".join(lines)
