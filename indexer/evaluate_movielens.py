"""Offline evaluation on MovieLens through the real engine: leave-last-out HR@10 and NDCG@10
against popularity and ALS baselines measured in the same run."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.catalog.items import upsert_items
from engine.ranking.metrics import hit_rate_at_k, ndcg_at_k
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from indexer import ablation
from indexer.build import build
from indexer.progress import Progress, no_progress

log = logging.getLogger(__name__)


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
    from indexer.examples import replay_examples
    from indexer.train import train_from_replayed

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
