"""Offline evaluation on MovieLens through the real engine: leave-last-out HR@10 and NDCG@10
against popularity and ALS baselines measured in the same run, with the base encoder and,
optionally, with one fine-tuned on the training history."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete

from engine.catalog.items import upsert_items
from engine.ranking.metrics import hit_rate_at_k, ndcg_at_k
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.search.request import SearchRequest
from engine.store.models import Covisit, Event, ItemStats, UserFeatures
from engine.users.events import EventIn
from indexer import ablation
from indexer.build import BuildReport, build
from indexer.encoder_tuning import TuneOptions, event_pairs, tune_encoder
from indexer.examples import is_positive
from indexer.progress import Progress, no_progress

log = logging.getLogger(__name__)

# The ranker's examples: each user's latest positives of the history (replay_examples).
REPLAY_PER_USER = 20
# At most this many (earlier item, later item) pairs tune the encoder: minutes on 2 cores.
TUNE_PAIRS = 4000


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
    tune: TuneOptions | None = None,
    tune_pairs: int = TUNE_PAIRS,
    validation: bool = False,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Leave-last-out on MovieLens: per user, the last movie rated >= 4 is held out; the
    engine's state is built from what came before only (in a private store under
    DATA_DIR/eval/movielens); the whole catalog minus seen movies is ranked by popularity,
    ALS, the first stage (retrieval) and the trained ranker (reranked). HR@10 and NDCG@10.

    With tune: the encoder is then fine-tuned on same-visit pairs (indexer.encoder_tuning's
    event_pairs, at most tune_pairs of them) from the history alone, and from each user's
    part of it before the events the ranker learns from (tuning_events); an index is built
    with it, the history is recorded again (users' taste vectors are sums of item vectors),
    and every figure is measured again under "encoder_tuned", with tuning_s.

    validation: the test's held-out movies and every later event are dropped first, and the
    same split is made of what is left (each user's last liked movie before the test one is
    held out): figures to choose settings by, which never see a test movie.

    max_users keeps the first N users (by id) and only the movies they rated: for tests.
    """
    from engine.core.clock import utcnow
    from engine.users.events import validate_event
    from indexer.datasets import movielens_items, movielens_ratings

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
    try:
        with rt.write_session() as session:
            for start in range(0, len(items), 1000):
                upsert_items(session, items[start : start + 1000])
        with rt.session() as session:
            build_report = build(rt, session, if_stale=True, progress=progress)

        now = utcnow()
        events = [validate_event(r, now=now) for r in ratings]
        if validation:
            events, _ = split_last_liked(events)
        history, held = split_last_liked(events)
        _record(rt, history, progress)

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
        # The baselines do not read the encoder: ranked once, scored in both runs.
        fixed = {
            "popularity": [
                [i for i in popular[: 10 + len(seen.get(u, ()))] if i not in seen.get(u, ())][:10]
                for u in users
            ]
        }
        if als is not None:
            fixed["als"] = [als[u] for u in users]
        targets = [{held[u].item_id} for u in users]
        result: dict[str, Any] = {
            "dataset": f"movielens:{folder.name}",
            "protocol": "leave-last-out: last movie rated >= 4 per user; history before it only",
            "split": "validation" if validation else "test",
            "users": len(users),
            "items": len(items),
            "history_events": len(history),
            **_measure(rt, history, users, seen, targets, fixed, progress),
            "index": _index_section(build_report),
            "als_seconds": round(als_s, 2),
        }
        if tune is not None:
            t = time.perf_counter()
            tune_on = tuning_events(history, settings.positive_rating, REPLAY_PER_USER)
            with rt.session() as session:
                found = event_pairs(session, tune_on, settings.positive_rating)
            pairs = random.Random(tune.seed).sample(found, min(tune_pairs, len(found)))
            tuned = tune_encoder(
                rt, pairs, {"history events": len(pairs)}, options=tune, progress=progress
            )
            tuning_s = time.perf_counter() - t
            with rt.session() as session:
                tuned_build = build(rt, session, encoder=tuned.version, progress=progress)
            _record(rt, history, progress, again=True)
            result["encoder_tuned"] = {
                **_measure(rt, history, users, seen, targets, fixed, progress),
                "index": _index_section(tuned_build),
                "tuning_s": round(tuning_s, 2),
                "encoder": tuned.to_dict(),
                "pairs": len(pairs),
                "pairs_found": len(found),
                "tuned_on_events": len(tune_on),
            }
    finally:
        rt.close()
    result["total_seconds"] = round(time.perf_counter() - started, 2)
    return result


def split_last_liked(events: Sequence[EventIn]) -> tuple[list[EventIn], dict[str, EventIn]]:
    """(history, held out by user): per user, the last event rated >= 4 is held out and the
    history keeps that user's events up to it; the history is oldest first."""
    by_user: dict[str, list[EventIn]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    held: dict[str, EventIn] = {}
    history: list[EventIn] = []
    for user, evs in by_user.items():
        liked = [e for e in evs if e.value is not None and e.value >= 4]
        target = max(liked, key=lambda e: (e.ts, e.item_id)) if liked else None
        if target is not None:
            held[user] = target
        history += [e for e in evs if target is None or (e is not target and e.ts <= target.ts)]
    history.sort(key=lambda e: (e.ts, e.user_id, e.item_id))
    return history, held


def tuning_events(
    history: Sequence[EventIn], positive_rating: float, per_user: int
) -> list[EventIn]:
    """What the encoder may learn from: each user's events before the first of their latest
    per_user positives, which are the ranker's replay examples. Its pairs then never hold a
    step the ranker learns from, as they never hold the held-out one: a ranker fitted where
    the encoder was tuned would trust its similarity more than it earns on new events."""
    ordered = sorted(history, key=lambda e: (e.ts, e.user_id, e.item_id))  # replay's order
    positives: dict[str, list[int]] = {}
    for n, e in enumerate(ordered):
        if is_positive(e, positive_rating):
            positives.setdefault(e.user_id, []).append(n)
    cut = {u: found[max(0, len(found) - per_user)] for u, found in positives.items()}
    return [e for n, e in enumerate(ordered) if n < cut.get(e.user_id, len(ordered))]


def _record(rt: Runtime, history: list[EventIn], progress: Progress, again: bool = False) -> None:
    """The engine's state (users' features, popularity, co-visits) from the history. again:
    recorded anew, after a build with another encoder (a taste vector sums item vectors)."""
    from engine.users.recording import record_events

    with rt.write_session() as session:
        if again:
            for model in (Covisit, ItemStats, UserFeatures, Event):
                session.execute(delete(model))
        for start in range(0, len(history), 5_000):
            record_events(session, history[start : start + 5_000], rt.settings, rt.vectors)
            progress("history", min(len(history), start + 5_000), len(history))


def _index_section(report: BuildReport) -> dict[str, Any]:
    return {"version": report.version, "factory": report.factory}


def _measure(
    rt: Runtime,
    history: list[EventIn],
    users: list[str],
    seen: dict[str, set[str]],
    targets: list[set[str]],
    fixed: dict[str, list[list[str]]],
    progress: Progress,
) -> dict[str, Any]:
    """The ranker trained by replaying the history on the serving index, then every method's
    figures: the fixed lists' (per user, in `users` order) and the engine's."""
    from engine.users.state import SqlState
    from indexer.examples import replay_examples
    from indexer.train import train_from_replayed

    t = time.perf_counter()
    with rt.session() as session:
        x, y, order, names = replay_examples(
            rt, session, history, max_per_user=REPLAY_PER_USER, progress=progress
        )
    ranker, train_report = train_from_replayed(rt, x, y, order, names)
    train_s = time.perf_counter() - t

    runs: dict[str, list[list[str]]] = {"retrieval": [], "reranked": []}
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
            progress("evaluate", n + 1, len(users))
    others = {method: ranked for method, ranked in fixed.items() if method != "popularity"}
    lists = {"popularity": fixed["popularity"], **runs, **others}
    metrics = {}
    for method, ranked in lists.items():
        metrics[method] = {
            "ndcg@10": round(_mean(ndcg_at_k, ranked, targets), 4),
            "hr@10": round(_mean(hit_rate_at_k, ranked, targets), 4),
        }

    def ndcg(model: LinearRanker) -> float:
        return _mean(ndcg_at_k, [top10(model, ids, xs) for ids, xs in pools], targets)

    ablations = ablation.ablate(x, y, names, ndcg, full=metrics["reranked"]["ndcg@10"])
    baselines = [m for m in ("popularity", "retrieval", "als") if m in metrics]
    best = max(metrics[m]["ndcg@10"] for m in baselines)
    return {
        "metrics": metrics,
        "reranked_over_best_baseline": round(metrics["reranked"]["ndcg@10"] / best, 3)
        if best
        else None,
        "ablations": ablations,
        "model": train_report.to_dict(),
        "train_seconds": round(train_s, 2),
    }


def _mean(
    metric: Callable[[list[str], set[str], int], float],
    ranked: list[list[str]],
    targets: list[set[str]],
) -> float:
    return float(np.mean([metric(r, t, 10) for r, t in zip(ranked, targets, strict=True)]))
