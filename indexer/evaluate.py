"""Offline evaluation through the real engine, with honest baselines measured in the same run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.catalog.items import upsert_items
from engine.index.ann.faiss import exact_top_k
from engine.ranking.metrics import hit_rate_at_k, ndcg_at_k, recall_at_k
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.search.pipeline import Searcher
from engine.search.request import SearchRequest
from indexer import ablation
from indexer.build import build
from indexer.click_prior import click_state, cross_fitted_states, judgment_clicks
from indexer.datasets import beir_items, beir_qrels, beir_queries
from indexer.progress import Progress, no_progress
from indexer.train import Judgment, judgment_examples, train_from_examples

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
    runtime: Runtime,
    folder: Path,
    *,
    promote: bool = False,
    folds: int = 10,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """NDCG@10 and Recall@100 on the test split for dense (exact), dense_ann (the published
    index), lexical (BM25), hybrid (min-max fusion over the engine's candidates), and the
    sigmoid ranker trained on the train split's judgments: reranked_no_prior (content
    features only) and reranked (also the click prior: see indexer.click_prior; training
    examples are cross-fitted over `folds` folds of the train queries). Test judgments are
    only read to score. Also: per-feature-group ablations of the reranked model."""
    started = time.perf_counter()
    import_beir(runtime, folder)
    with runtime.session() as session:
        build_report = build(runtime, session, if_stale=True, progress=progress)
    queries = beir_queries(folder)
    train_qrels = beir_qrels(folder, "train")
    test_qrels = beir_qrels(folder, "test")

    # Both stages look 100 deep, the depth Recall@100 measures.
    deep = runtime.settings.replace(candidates=DEPTH, lexical_candidates=DEPTH)
    searcher = Searcher(deep, runtime.embedder, live=runtime.live, vectors=runtime.vectors)
    t = time.perf_counter()
    # Keyed by query text, as judgments are: two train queries with one text are one query,
    # so neither's clicks can reach the other's features.
    judged: dict[str, dict[str, float]] = {}
    for q, docs in train_qrels.items():
        if q in queries:
            judged.setdefault(queries[q], {}).update(docs)
    judgments = [
        Judgment(text, doc, grade) for text, docs in judged.items() for doc, grade in docs.items()
    ]
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

    artifact = runtime.searcher.artifact()
    vectors = np.asarray(artifact.vectors())
    test_ids = [q for q in test_qrels if q in queries]
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
            _, exact = exact_top_k(qv[None, :], vectors, DEPTH)
            runs["dense"].append([artifact.ids[r] for r in exact[0]])
            _, approx = artifact.ann.search(qv, DEPTH)
            runs["dense_ann"].append([artifact.ids[r] for r in approx[0] if r >= 0])
            lexical = artifact.lexical
            lexical_rows: list[int] = (
                lexical.search(text, DEPTH)[0].tolist() if lexical is not None else []
            )
            runs["lexical"].append([artifact.ids[r] for r in lexical_rows])

            stage = searcher.first_stage(session, SearchRequest(q=text, k=DEPTH), state=test_state)
            ids = [c.item_id for c in stage.candidates]
            sims = stage.x[:, stage.names.index("query_sim")]
            bm25 = np.array([c.lexical_score for c in stage.candidates])
            fused = _minmax(sims) + _minmax(bm25)
            runs["hybrid"].append([ids[i] for i in np.argsort(-fused, kind="stable")])
            runs["reranked_no_prior"].append(rerank(no_prior, ids, stage.x))
            runs["reranked"].append(rerank(ranker, ids, stage.x))
            stages.append((ids, stage.x))
            progress("evaluate", n + 1, len(test_ids))

    def ndcg(model: LinearRanker) -> float:
        return _mean_ndcg([rerank(model, ids, xs) for ids, xs in stages], test_ids, test_qrels)

    metrics = {}
    for method, ranked_lists in runs.items():
        metrics[method] = {
            "ndcg@10": round(_mean_ndcg(ranked_lists, test_ids, test_qrels), 4),
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
        "dataset": f"beir:{folder.name}",
        "split": "test",
        "queries": len(test_ids),
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
        "index": {
            "version": build_report.version,
            "factory": build_report.factory,
            "params": build_report.params,
        },
        "model": {"version": train_report.version, "promoted": promote, **train_report.to_dict()},
        "train_seconds": round(train_s, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
    }


def _mean_ndcg(
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


def _als_recommendations(
    history: list[Any], users: list[str], k: int, factors: int = 64
) -> dict[str, list[str]] | None:
    """Top-k per user from implicit's ALS on the history (the peer baseline); None without
    the optional `implicit` package (pip install 'recsearch[eval]')."""
    try:
        from implicit.als import AlternatingLeastSquares
    except ImportError:
        log.warning("implicit is not installed: no ALS baseline (pip install 'recsearch[eval]')")
        return None
    from scipy.sparse import csr_matrix
    from threadpoolctl import threadpool_limits

    user_index = {u: i for i, u in enumerate(sorted({e.user_id for e in history}))}
    items = sorted({e.item_id for e in history})
    item_index = {it: i for i, it in enumerate(items)}
    rows = [user_index[e.user_id] for e in history]
    cols = [item_index[e.item_id] for e in history]
    matrix = csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(user_index), len(items))
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    # implicit threads itself; BLAS threads would only fight it (it warns otherwise).
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=factors, regularization=0.05, iterations=15, random_state=0
        )
        model.fit(matrix, show_progress=False)
    out: dict[str, list[str]] = {}
    for user in users:
        u = user_index.get(user)
        if u is None:
            out[user] = []
            continue
        ids, _ = model.recommend(u, matrix[u], N=k, filter_already_liked_items=True)
        out[user] = [items[i] for i in ids]
    return out


def evaluate_movielens(
    runtime: Runtime,
    folder: Path,
    *,
    max_users: int | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Leave-last-out on MovieLens: per user, the last movie rated >= 4 is held out; the
    engine's state is built from what came before only (in a private store under
    DATA_DIR/eval/movielens); the whole catalog minus seen movies is ranked by popularity,
    ALS, the first stage (retrieval) and the trained ranker (reranked). HR@10 and NDCG@10.

    max_users keeps the first N users (by id) and only the movies they rated: for tests.
    """
    from datetime import timedelta

    from engine.core.clock import utcnow
    from engine.users.events import validate_event
    from engine.users.recording import record_events
    from engine.users.state import SqlState
    from indexer.datasets import movielens_items, movielens_ratings
    from indexer.train import replay_examples, train_from_replayed

    started = time.perf_counter()
    settings = runtime.settings.replace(
        data_dir=runtime.settings.data_dir / "eval" / "movielens", database_url=None
    )
    for suffix in ("", "-wal", "-shm"):  # a fresh database: the state comes from history only
        (settings.data_dir / f"recsearch.db{suffix}").unlink(missing_ok=True)
    rt = Runtime(settings, embedder=runtime.embedder)
    ratings = movielens_ratings(folder)
    items = movielens_items(folder)
    if max_users is not None:
        kept = set(sorted({str(r["user_id"]) for r in ratings}, key=int)[:max_users])
        ratings = [r for r in ratings if r["user_id"] in kept]
        rated = {r["item_id"] for r in ratings}
        items = [i for i in items if i.id in rated]
    with rt.write_session() as session:
        for start in range(0, len(items), 1000):
            upsert_items(session, items[start : start + 1000])
    with rt.session() as session:
        build_report = build(rt, session, if_stale=True, progress=progress)

    now = utcnow()
    events = [validate_event(r, now=now) for r in ratings]
    by_user: dict[str, list[Any]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    held: dict[str, Any] = {}
    history = []
    for user, evs in by_user.items():
        liked = [e for e in evs if e.value is not None and e.value >= 4]
        target = max(liked, key=lambda e: (e.ts, e.item_id)) if liked else None
        if target is not None:
            held[user] = target
        history += [e for e in evs if target is None or (e is not target and e.ts <= target.ts)]
    history.sort(key=lambda e: (e.ts, e.user_id, e.item_id))
    with rt.write_session() as session:
        for start in range(0, len(history), 5_000):
            record_events(session, history[start : start + 5_000], settings, rt.vectors)
            progress("history", min(len(history), start + 5_000), len(history))

    t = time.perf_counter()
    with rt.session() as session:
        x, y, order, names = replay_examples(rt, session, history, progress=progress)
    ranker, train_report = train_from_replayed(rt, x, y, order, names)
    train_s = time.perf_counter() - t

    seen: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for e in history:
        seen.setdefault(e.user_id, set()).add(e.item_id)
        counts[e.item_id] = counts.get(e.item_id, 0) + 1
    popular = sorted(counts, key=lambda i: (-counts[i], i))
    users = sorted(held)
    t = time.perf_counter()
    als = _als_recommendations(history, users, 10)
    als_s = time.perf_counter() - t
    runs: dict[str, list[list[str]]] = {"popularity": [], "retrieval": [], "reranked": []}
    if als is not None:
        runs["als"] = []
    end = max(e.ts for e in history) + timedelta(seconds=1)
    pools: list[tuple[list[str], np.ndarray]] = []  # (unseen candidate ids, features) per user

    def top10(model: LinearRanker, ids: list[str], x_pool: np.ndarray) -> list[str]:
        if not ids:
            return []
        logits = model.aligned(names).logits(x_pool)
        return [ids[i] for i in np.argsort(-logits, kind="stable")[:10]]

    searcher = rt.searcher
    with rt.session() as session:
        state = SqlState(session, end)
        for n, user in enumerate(users):
            skip = seen.get(user, set())
            runs["popularity"].append([i for i in popular[: 10 + len(skip)] if i not in skip][:10])
            request = SearchRequest(user_id=user, k=10, exclude_seen="all")
            stage = searcher.first_stage(session, request, state=state)
            pool = [c for c in stage.candidates if c.item_id not in skip]
            by_ann = sorted(
                (c for c in pool if c.ann_rank is not None), key=lambda c: c.ann_rank or 0
            )
            runs["retrieval"].append([c.item_id for c in by_ann[:10]])
            keep = [i for i, c in enumerate(stage.candidates) if c.item_id not in skip]
            pool_ids = [stage.candidates[i].item_id for i in keep]
            pools.append((pool_ids, stage.x[keep]))
            runs["reranked"].append(top10(ranker, pool_ids, stage.x[keep]))
            if als is not None:
                runs["als"].append(als[user])
            progress("evaluate", n + 1, len(users))
    metrics = {}
    for method, lists in runs.items():
        targets = [{held[u].item_id} for u in users]
        metrics[method] = {
            "ndcg@10": round(
                float(np.mean([ndcg_at_k(r, t, 10) for r, t in zip(lists, targets, strict=True)])),
                4,
            ),
            "hr@10": round(
                float(
                    np.mean([hit_rate_at_k(r, t, 10) for r, t in zip(lists, targets, strict=True)])
                ),
                4,
            ),
        }
    rt.close()
    targets = [{held[u].item_id} for u in users]

    def ndcg(model: LinearRanker) -> float:
        ranked = [top10(model, ids, xs) for ids, xs in pools]
        return float(np.mean([ndcg_at_k(r, t, 10) for r, t in zip(ranked, targets, strict=True)]))

    ablations = ablation.ablate(x, y, names, ndcg, full=metrics["reranked"]["ndcg@10"])
    baselines = [m for m in ("popularity", "retrieval", "als") if m in metrics]
    best = max(metrics[m]["ndcg@10"] for m in baselines)
    return {
        "dataset": f"movielens:{folder.name}",
        "protocol": "leave-last-out: last movie rated >= 4 per user; history before it only",
        "users": len(users),
        "items": len(items),
        "history_events": len(history),
        "metrics": metrics,
        "reranked_over_best_baseline": round(metrics["reranked"]["ndcg@10"] / best, 3)
        if best
        else None,
        "ablations": ablations,
        "index": {"version": build_report.version, "factory": build_report.factory},
        "model": train_report.to_dict(),
        "train_seconds": round(train_s, 2),
        "als_seconds": round(als_s, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
    }
