"""The train job: fit the sigmoid ranker from judgments (query, item, grade), report held-out
AUC and log loss, and save it as a model version (live only when promoted)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.core.errors import InvalidInput
from engine.ranking import experiments
from engine.ranking.metrics import auc, log_loss
from engine.ranking.model_store import ModelStore
from engine.ranking.ranker import LinearRanker, fit_logistic
from engine.runtime import Runtime
from engine.search.pipeline import Searcher
from engine.store.models import Event, Impression
from engine.users.events import EventIn
from engine.users.state import StateView
from indexer.examples import (
    Judgment,
    impression_examples,
    judgment_examples,
    replay_examples,
    stored_events,
)
from indexer.progress import Progress, no_progress

log = logging.getLogger(__name__)


@dataclass
class TrainReport:
    version: str | None
    promoted: bool
    examples: int
    positives: int
    train_queries: int
    validation_queries: int
    validation_auc: float
    validation_log_loss: float
    train_seconds: float
    weights: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def train_from_judgments(
    runtime: Runtime,
    session: Session,
    judgments: Sequence[Judgment],
    *,
    promote: bool = False,
    validation_fraction: float = 0.2,
    l2: float = 1e-3,
    progress: Progress = no_progress,
    searcher: Searcher | None = None,
    states: Mapping[str, StateView] | None = None,
) -> tuple[LinearRanker, TrainReport]:
    """Fit on a random 1 - validation_fraction of the queries, report on the rest, then refit
    on all of them and save that model (with the held-out report) as a new version.
    states: see judgment_examples."""
    started = time.perf_counter()
    examples = judgment_examples(runtime, session, judgments, progress, searcher, states)
    return train_from_examples(
        runtime,
        *examples,
        promote=promote,
        validation_fraction=validation_fraction,
        l2=l2,
        progress=progress,
        started=started,
    )


def train_from_examples(
    runtime: Runtime,
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    names: tuple[str, ...],
    *,
    promote: bool = False,
    validation_fraction: float = 0.2,
    l2: float = 1e-3,
    progress: Progress = no_progress,
    started: float | None = None,
) -> tuple[LinearRanker, TrainReport]:
    """train_from_judgments on examples already made (judgment_examples' output): a random
    split by query for the held-out report, then a refit on all, saved as a new version."""
    started = time.perf_counter() if started is None else started
    if y.sum() == 0 or y.sum() == len(y):
        raise InvalidInput("the judgments give only one class of examples; need both")
    queries = np.unique(groups)
    rng = np.random.default_rng(0)
    held_out = set(
        rng.choice(
            queries, size=max(1, int(len(queries) * validation_fraction)), replace=False
        ).tolist()
    )
    is_val = np.isin(groups, list(held_out))
    progress("fit", 0, 1)
    result = _fit_and_save(
        runtime,
        x,
        y,
        is_val,
        names,
        groups=(len(queries) - len(held_out), len(held_out)),
        source="judgments",
        promote=promote,
        l2=l2,
        started=started,
    )
    progress("fit", 1, 1)
    return result


def default_source(runtime: Runtime, session: Session) -> tuple[str, str]:
    """Which history `recsearch train` learns from without a flag, and why, in words:
    logged impressions when some were clicked (events naming their request_id), else the
    event history by replay."""
    runtime.impressions.flush()
    shown = session.scalar(select(func.count()).select_from(Impression)) or 0
    clicked = 0
    if shown:
        clicked = (
            session.scalar(
                select(func.count(func.distinct(Event.request_id))).where(
                    Event.request_id.in_(select(Impression.request_id))
                )
            )
            or 0
        )
    if clicked:
        return "impressions", (
            f"training from logged impressions ({shown} shown results, {clicked} requests "
            "with a click)"
        )
    if shown:
        return "events", (
            f"{shown} logged impressions but no event names their request_id: training from "
            "the event history"
        )
    return "events", "no logged impressions: training from the event history"


def train_from_impressions(
    runtime: Runtime,
    session: Session,
    *,
    promote: bool = False,
    validation_fraction: float = 0.2,
    l2: float = 1e-3,
    progress: Progress = no_progress,
) -> tuple[LinearRanker, TrainReport]:
    """Fit on the older requests, report AUC and log loss on the newest ones (no peeking at
    the future), then refit on all and save the model version."""
    started = time.perf_counter()
    progress("examples", 0, 1)
    runtime.impressions.flush()
    x, y, order, names = impression_examples(runtime, session)
    progress("examples", 1, 1)
    if y.sum() == 0 or y.sum() == len(y):
        raise InvalidInput(
            f"{len(y)} logged impressions but {int(y.sum())} positives: need clicks (events with "
            "the search's request_id) and shown-but-not-clicked results to learn from"
        )
    is_val, groups = _newest_held_out(order, validation_fraction)
    return _fit_and_save(
        runtime,
        x,
        y,
        is_val,
        names,
        groups=groups,
        source="impressions",
        promote=promote,
        l2=l2,
        started=started,
    )


def train_from_events(
    runtime: Runtime,
    session: Session,
    events: Sequence[EventIn] | None = None,
    *,
    promote: bool = False,
    validation_fraction: float = 0.2,
    l2: float = 1e-3,
    searcher: Searcher | None = None,
    progress: Progress = no_progress,
    max_per_user: int = 20,
) -> tuple[LinearRanker, TrainReport]:
    """Fit the ranker on replayed history (see replay_examples): the oldest examples train,
    the newest validation_fraction report AUC and log loss; then refit on all and save."""
    started = time.perf_counter()
    if events is None:
        events = stored_events(session)
    x, y, order, names = replay_examples(
        runtime, session, events, searcher=searcher, progress=progress, max_per_user=max_per_user
    )
    return train_from_replayed(
        runtime,
        x,
        y,
        order,
        names,
        promote=promote,
        validation_fraction=validation_fraction,
        l2=l2,
        started=started,
    )


def train_from_replayed(
    runtime: Runtime,
    x: np.ndarray,
    y: np.ndarray,
    order: np.ndarray,
    names: tuple[str, ...],
    *,
    promote: bool = False,
    validation_fraction: float = 0.2,
    l2: float = 1e-3,
    started: float | None = None,
) -> tuple[LinearRanker, TrainReport]:
    """train_from_events on examples already replayed (replay_examples' output): the newest
    validation_fraction report, then a refit on all, saved as a new version."""
    started = time.perf_counter() if started is None else started
    is_val, groups = _newest_held_out(order, validation_fraction)
    return _fit_and_save(
        runtime,
        x,
        y,
        is_val,
        names,
        groups=groups,
        source="events (point-in-time replay)",
        promote=promote,
        l2=l2,
        started=started,
    )


def fit_ranker(
    x: np.ndarray, y: np.ndarray, names: Sequence[str], *, l2: float = 1e-3
) -> LinearRanker:
    """The one fit every trained ranker uses (evaluate's ablations too): class-balanced
    logistic regression on standardized features."""
    return fit_logistic(x, y, names, l2=l2, balance_classes=True)


def _fit_and_save(
    runtime: Runtime,
    x: np.ndarray,
    y: np.ndarray,
    is_val: np.ndarray,
    names: tuple[str, ...],
    *,
    groups: tuple[int, int],
    source: str,
    promote: bool,
    l2: float,
    started: float,
) -> tuple[LinearRanker, TrainReport]:
    """Fit on the training rows and report on the held-out ones, then refit on all rows and
    save that model with the report as a new version (live when promote)."""
    if y[~is_val].sum() in (0, (~is_val).sum()):
        raise InvalidInput("the training part holds only one class of examples; need both")
    held = fit_ranker(x[~is_val], y[~is_val], names, l2=l2)
    p_val = held.probability(held.logits(x[is_val]))
    ranker = fit_ranker(x, y, names, l2=l2)
    report = TrainReport(
        version=None,
        promoted=promote,
        examples=len(y),
        positives=int(y.sum()),
        train_queries=groups[0],
        validation_queries=groups[1],
        validation_auc=round(auc(y[is_val], p_val), 4),
        validation_log_loss=round(log_loss(y[is_val], p_val), 4),
        train_seconds=round(time.perf_counter() - started, 2),
        weights={n: round(float(w), 4) for n, w in zip(names, ranker.weights, strict=True)},
    )
    details = {"source": source, "trained_at": datetime.now(UTC).isoformat(timespec="seconds")}
    store = ModelStore(runtime.settings.model_dir)
    report.version = store.save(ranker, {**report.to_dict(), **details}, promote=promote)
    _prune(runtime, store)
    return LinearRanker.from_json(ranker.to_json(), report.version), report


def _prune(runtime: Runtime, store: ModelStore) -> None:
    """Keep the newest settings.keep_versions models, as a build keeps indexes, and those
    still in use: the live one, its rollback target and a running experiment's."""
    with runtime.session() as session:
        in_use = experiments.models_in_use(session)
    pruned = store.prune(runtime.settings.keep_versions, pinned=in_use)
    if pruned:
        log.info("pruned model versions %s", ", ".join(pruned))


def _newest_held_out(order: np.ndarray, fraction: float) -> tuple[np.ndarray, tuple[int, int]]:
    """A time-based split: the newest `fraction` of groups (requests, replayed events) are
    held out. Returns the held-out mask and (training groups, held-out groups)."""
    n_groups = int(order.max()) + 1
    cutoff = n_groups - max(1, int(n_groups * fraction))
    return order >= cutoff, (cutoff, n_groups - cutoff)
