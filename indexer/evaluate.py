"""Offline evaluation through the real engine, with honest baselines measured in the same run."""

from __future__ import annotations

import random
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from engine.catalog.items import upsert_items
from engine.index.ann.faiss import exact_top_k
from engine.ranking.metrics import ndcg_at_k, recall_at_k
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.search.pipeline import Searcher
from engine.search.request import SearchRequest
from indexer import ablation
from indexer.build import BuildReport, build
from indexer.click_prior import click_state, cross_fitted_states, judgment_clicks
from indexer.datasets import beir_items, beir_qrels, beir_queries
from indexer.encoder_pairs import judgment_pairs
from indexer.encoder_tuning import TuneOptions, tune_encoder
from indexer.examples import Judgment, judgment_examples
from indexer.progress import Progress, no_progress
from indexer.train import train_from_examples

DEPTH = 100
# With a tuned encoder: the share of train queries kept out of its tuning, to fit the ranker.
RANKER_SHARE = 0.25


def import_beir(runtime: Runtime, folder: Path) -> int:
    """Upsert a BEIR corpus as catalog items; returns how many items changed."""
    items = beir_items(folder)
    changed = 0
    with runtime.write_session() as session:
        for start in range(0, len(items), 1000):
            changed += upsert_items(session, items[start : start + 1000]).changed
    return changed


def evaluate_beir(
    runtime: Runtime,
    folder: Path,
    *,
    promote: bool = False,
    folds: int = 10,
    tune: TuneOptions | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """NDCG@10 and Recall@100 on the test split for dense (exact), dense_ann (the published
    index), lexical (BM25), hybrid (min-max fusion over the engine's candidates), and the
    sigmoid ranker trained on the train split's judgments: reranked_no_prior (content
    features only) and reranked (also the click prior: see indexer.click_prior; training
    examples are cross-fitted over `folds` folds of the train queries). Test judgments are
    only read to score. Also: per-feature-group ablations of the reranked model.

    With tune: the encoder is then fine-tuned on the train split's judgments (and nothing
    else: the pairs come from `judged`, built from train.tsv alone), an index is built with
    it, and every figure is measured again under "encoder_tuned", with tuning_s.
    """
    started = time.perf_counter()
    import_beir(runtime, folder)
    with runtime.session() as session:
        build_report = build(runtime, session, if_stale=True, progress=progress)
    queries = beir_queries(folder)
    train_qrels = beir_qrels(folder, "train")
    test_qrels = beir_qrels(folder, "test")
    # Keyed by query text, as judgments are: two train queries with one text are one query,
    # so neither's clicks can reach the other's features.
    judged: dict[str, dict[str, float]] = {}
    for q, docs in train_qrels.items():
        if q in queries:
            judged.setdefault(queries[q], {}).update(docs)
    test_ids = [q for q in test_qrels if q in queries]
    result: dict[str, Any] = {
        "dataset": f"beir:{folder.name}",
        "split": "test",
        "queries": len(test_ids),
        **_measure(runtime, judged, queries, test_ids, test_qrels, folds, promote, progress),
        "index": _index_section(build_report),
    }
    if tune is not None:
        # The encoder learns from most train queries; the ranker over its scores from the
        # rest. On queries it was tuned on, its dense score is too good, and a ranker fitted
        # there learns to trust it more than it earns on new queries (stacking leakage).
        texts = sorted(judged)
        random.Random(tune.seed).shuffle(texts)
        held = set(texts[: max(1, round(len(texts) * RANKER_SHARE))])
        tune_on = {text: docs for text, docs in judged.items() if text not in held}
        t = time.perf_counter()
        with runtime.session() as session:
            pairs = judgment_pairs(
                runtime,
                session,
                as_judgments(tune_on),
                seed=tune.seed,
                windows=tune.windows,
                progress=progress,
            )
        tuned = tune_encoder(
            runtime, pairs, {"train judgments": len(pairs)}, options=tune, progress=progress
        )
        tuning_s = time.perf_counter() - t
        with runtime.session() as session:
            tuned_build = build(runtime, session, encoder=tuned.version, progress=progress)
        measured = _measure(
            runtime, judged, queries, test_ids, test_qrels, folds, False, progress, held
        )
        result["encoder_tuned"] = {
            **measured,
            "tuning_s": round(tuning_s, 2),
            "encoder": tuned.to_dict(),
            "tuned_on_queries": len(tune_on),
            "ranker_queries": len(held),
            "index": _index_section(tuned_build),
        }
    result["total_seconds"] = round(time.perf_counter() - started, 2)
    return result


def as_judgments(judged: dict[str, dict[str, float]]) -> list[Judgment]:
    return [
        Judgment(text, doc, grade) for text, docs in judged.items() for doc, grade in docs.items()
    ]


def _index_section(report: BuildReport) -> dict[str, Any]:
    return {
        "version": report.version,
        "factory": report.factory,
        "params": report.params,
        "build_seconds": round(report.build_seconds, 2),
    }


def _measure(
    runtime: Runtime,
    judged: dict[str, dict[str, float]],
    queries: dict[str, str],
    test_ids: list[str],
    test_qrels: dict[str, dict[str, float]],
    folds: int,
    promote: bool,
    progress: Progress,
    ranker_queries: Collection[str] | None = None,
) -> dict[str, Any]:
    """Every method's figures on the serving index, its ranker trained on `judged` (only the
    ranker_queries among them, when given; the click prior comes from all)."""
    # Both stages look 100 deep, the depth Recall@100 measures.
    deep = runtime.settings.replace(candidates=DEPTH, lexical_candidates=DEPTH)
    searcher = Searcher(deep, runtime.embedder, live=runtime.live, vectors=runtime.vectors)
    t = time.perf_counter()
    judgments = as_judgments(
        judged if ranker_queries is None else {t: judged[t] for t in ranker_queries}
    )
    with runtime.session() as session:
        fold, fold_states = cross_fitted_states(session, deep, judged, folds)
        all_clicks = judgment_clicks(judged)
        test_state = click_state(session, deep, all_clicks)
        x, y, groups, names = judgment_examples(
            runtime,
            session,
            judgments,
            progress,
            searcher,
            {text: fold_states[fold[text]] for text in judged},
        )
    ranker, train_report = train_from_examples(
        runtime, x, y, groups, names, promote=promote, progress=progress
    )
    train_s = time.perf_counter() - t
    no_prior = ablation.without(x, y, names, ablation.groups(names).get("popularity", []), l2=1e-3)

    artifact = searcher.artifact()
    vectors = np.asarray(artifact.vectors())
    runs: dict[str, list[list[str]]] = {
        m: [] for m in ("dense", "dense_ann", "lexical", "hybrid", "reranked_no_prior", "reranked")
    }
    stages: list[tuple[list[str], np.ndarray]] = []  # (candidate ids, features) per test query

    def rerank(model: LinearRanker, ids: list[str], x_test: np.ndarray) -> list[str]:
        logits = model.aligned(names).logits(x_test)
        return [ids[i] for i in np.argsort(-logits, kind="stable")]

    with runtime.session() as session:
        for n, qid in enumerate(test_ids):
            text = queries[qid]
            qv = runtime.embedder.encode_query(text)
            runs["dense"].append([artifact.ids[r] for r in exact_dense(artifact, vectors, qv)])
            runs["dense_ann"].append([artifact.ids[r] for r in ann_dense(artifact, qv)])
            lexical = artifact.lexical
            lexical_rows: list[int] = (
                lexical.search(text, DEPTH)[0].tolist() if lexical is not None else []
            )
            runs["lexical"].append([artifact.ids[r] for r in lexical_rows])

            stage = searcher.first_stage(session, SearchRequest(q=text, k=DEPTH), state=test_state)
            ids = [c.item_id for c in stage.candidates]
            runs["hybrid"].append([ids[i] for i in hybrid_order(stage)])
            runs["reranked_no_prior"].append(rerank(no_prior, ids, stage.x))
            runs["reranked"].append(rerank(ranker, ids, stage.x))
            stages.append((ids, stage.x))
            progress("evaluate", n + 1, len(test_ids))

    def ndcg(model: LinearRanker) -> float:
        return mean_ndcg([rerank(model, ids, xs) for ids, xs in stages], test_ids, test_qrels)

    metrics = {}
    for method, ranked_lists in runs.items():
        metrics[method] = {
            "ndcg@10": round(mean_ndcg(ranked_lists, test_ids, test_qrels), 4),
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
    clicked = {doc for docs in judged.values() for doc in docs}
    return {
        "documents": len(artifact.ids),
        "metrics": metrics,
        "prior": {
            "source": "train judgments as clicks, one pseudo-user per train query",
            "clicks": len(all_clicks),
            "clicked_items": len(clicked),
            "folds": folds,
            # How much a prior can help: test queries with an answer someone clicked before.
            "test_queries_answered_before": sum(
                1 for q in test_ids if set(test_qrels[q]) & clicked
            ),
        },
        "ablations": ablation.ablate(
            x,
            y,
            names,
            ndcg,
            full=metrics["reranked"]["ndcg@10"],
            known={"popularity": no_prior},
        ),
        "model": {"version": train_report.version, "promoted": promote, **train_report.to_dict()},
        "train_seconds": round(train_s, 2),
    }


def exact_dense(artifact: Any, vectors: np.ndarray, qv: np.ndarray) -> list[int]:
    """The DEPTH rows nearest the query by exact search, each item at its best window's
    similarity when the version holds chunks (MaxP, engine.index.chunks)."""
    scores, rows = exact_top_k(qv[None, :], vectors, DEPTH)
    chunks = artifact.chunks
    if chunks is None:
        return [r for r in rows[0].tolist() if r >= 0]
    # Enough windows that every item of the exact top DEPTH has its best one among them.
    k = DEPTH * max(1, int(artifact.manifest["chunks"]["max_chunks"]))
    found, windows = exact_top_k(qv[None, :], np.asarray(chunks.vectors), k)
    best = [(int(chunks.items[w]), s) for s, w in zip(found[0], windows[0], strict=True)]
    return _best_first(rows[0], scores[0], best)


def ann_dense(artifact: Any, qv: np.ndarray) -> list[int]:
    """exact_dense through the published indexes (the items', and the windows')."""
    scores, rows = artifact.ann.search(qv, DEPTH)
    chunks = artifact.chunks
    if chunks is None:
        return [r for r in rows[0].tolist() if r >= 0]
    k = DEPTH * max(1, int(artifact.manifest["chunks"]["max_chunks"]))
    return _best_first(rows[0], scores[0], chunks.search(qv, k))


def _best_first(
    rows: np.ndarray, scores: np.ndarray, windows: list[tuple[int, float]]
) -> list[int]:
    """The DEPTH best rows, each at the best of its own score and its windows' (MaxP)."""
    best: dict[int, float] = {}
    for row, score in [*zip(rows.tolist(), scores.tolist(), strict=True), *windows]:
        if row >= 0 and score > best.get(row, -np.inf):
            best[row] = float(score)
    return sorted(best, key=lambda r: (-best[r], r))[:DEPTH]


def hybrid_order(stage: Any) -> np.ndarray:
    """Candidate positions by min-max fused dense and BM25 score (the evaluation's hybrid)."""
    sims = stage.x[:, stage.names.index("query_sim")]
    bm25 = np.array([c.lexical_score for c in stage.candidates])
    return np.argsort(-(minmax(sims) + minmax(bm25)), kind="stable")


def minmax(values: np.ndarray) -> np.ndarray:
    spread = float(values.max() - values.min()) if values.size else 0.0
    return (values - values.min()) / spread if spread > 1e-12 else np.zeros_like(values)


def mean_ndcg(
    ranked_lists: list[list[str]], query_ids: list[str], qrels: dict[str, dict[str, float]]
) -> float:
    return float(
        np.mean([ndcg_at_k(r, qrels[q], 10) for r, q in zip(ranked_lists, query_ids, strict=True)])
    )


def print_table(result: dict[str, Any]) -> str:
    metric_names = sorted({m for v in result["metrics"].values() for m in v})
    count = result.get("queries") or result.get("users")
    lines = [f"{result['dataset']} ({count} {'queries' if 'queries' in result else 'users'})"]
    width = max(12, *(len(m) + 1 for m in result["metrics"]))
    lines.append(f"{'method':<{width}}" + "".join(f"{m:>12}" for m in metric_names))
    for method, values in result["metrics"].items():
        lines.append(
            f"{method:<{width}}"
            + "".join(f"{values.get(m, float('nan')):>12.4f}" for m in metric_names)
        )
    ablations = result.get("ablations") or {}
    if ablations:
        lines.append("reranked without one feature group (re-trained), NDCG@10:")
        for group, found in ablations.items():
            lines.append(
                f"  {group:<{width - 2}}"
                + (
                    "     unused (constant here)"
                    if found.get("unused")
                    else f"{found['ndcg@10']:>12.4f}{found['change']:>+12.4f}"
                )
            )
    return "\n".join(lines)
