"""The train job: fit the sigmoid ranker from judgments (query, item, grade), report held-out
AUC and log loss, and save it as a model version (live only when promoted)."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InvalidInput
from engine.metrics import auc, log_loss
from engine.model_store import ModelStore
from engine.ranker import LinearRanker, fit_logistic
from engine.runtime import Runtime
from engine.search import Searcher, SearchRequest
from indexer.progress import Progress, no_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Judgment:
    query: str
    item_id: str
    grade: float


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


def read_judgments(path: Path) -> list[Judgment]:
    """(query, item_id, grade) rows from JSONL, CSV or TSV with those column names."""
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    rows: list[dict[str, Any]]
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter=delimiter))
    out = []
    for line, row in enumerate(rows, start=2 if path.suffix.lower() != ".jsonl" else 1):
        try:
            out.append(Judgment(str(row["query"]), str(row["item_id"]), float(row["grade"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(
                f"{path}:{line}: a judgment needs query, item_id and a numeric grade ({exc!r})"
            ) from None
    return out


def judgment_examples(
    runtime: Runtime,
    judgments: Sequence[Judgment],
    progress: Progress = no_progress,
    searcher: Searcher | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Features of the first stage's candidates for each judged query: (x, y, query_index).

    Judged items with grade > 0 among the candidates are positives; the other candidates of
    the query are its negatives. Judged items no source found are left out: the ranker can
    only reorder candidates, and scoring them would teach it that "not retrieved" means
    relevant (their rank features are all zero).
    """
    by_query: dict[str, dict[str, float]] = defaultdict(dict)
    for j in judgments:
        by_query[j.query][j.item_id] = j.grade
    xs, ys, groups = [], [], []
    searcher = searcher or runtime.searcher
    k = max(searcher.settings.candidates, 1)
    with runtime.session() as session:
        for qi, (query, grades) in enumerate(by_query.items()):
            positives = [i for i, g in grades.items() if g > 0]
            stage = searcher.first_stage(
                session, SearchRequest(q=query, k=min(k, runtime.settings.max_k))
            )
            if not stage.candidates or not set(positives) & {c.item_id for c in stage.candidates}:
                continue
            xs.append(stage.x)
            ys.append(
                np.array([1.0 if grades.get(c.item_id, 0) > 0 else 0.0 for c in stage.candidates])
            )
            groups.append(np.full(len(stage.candidates), qi))
            progress("examples", qi + 1, len(by_query))
    if not xs:
        raise InvalidInput("no judged query produced any candidate: is the index built?")
    return np.vstack(xs), np.concatenate(ys), np.concatenate(groups), searcher.feature_names


def train_from_judgments(
    runtime: Runtime,
    judgments: Sequence[Judgment],
    *,
    promote: bool = False,
    validation_fraction: float = 0.2,
    l2: float = 1e-3,
    progress: Progress = no_progress,
    searcher: Searcher | None = None,
) -> tuple[LinearRanker, TrainReport]:
    """Fit on a random 1 - validation_fraction of the queries, report on the rest, then refit
    on all of them and save that model (with the held-out report) as a new version."""
    started = time.perf_counter()
    x, y, groups, names = judgment_examples(runtime, judgments, progress, searcher)
    if y.sum() == 0 or y.sum() == len(y):
        raise InvalidInput("the judgments give only one class of examples; need both")
    queries = np.unique(groups)
    rng = np.random.default_rng(0)
    held_out = set(
        rng.choice(
            queries, size=max(1, int(len(queries) * validation_fraction)), replace=False
        ).tolist()
    )
    is_val = np.array([g in held_out for g in groups])
    progress("fit", 0, 1)
    held = fit_logistic(x[~is_val], y[~is_val], names, l2=l2, balance_classes=True)
    p_val = held.probability(held.logits(x[is_val]))
    ranker = fit_logistic(x, y, names, l2=l2, balance_classes=True)
    progress("fit", 1, 1)
    report = TrainReport(
        version=None,
        promoted=promote,
        examples=len(y),
        positives=int(y.sum()),
        train_queries=len(queries) - len(held_out),
        validation_queries=len(held_out),
        validation_auc=round(auc(y[is_val], p_val), 4),
        validation_log_loss=round(log_loss(y[is_val], p_val), 4),
        train_seconds=round(time.perf_counter() - started, 2),
        weights={n: round(float(w), 4) for n, w in zip(names, ranker.weights, strict=True)},
    )
    store = ModelStore(runtime.settings.model_dir)
    details = {"source": "judgments", "trained_at": datetime.now(UTC).isoformat(timespec="seconds")}
    report.version = store.save(ranker, {**report.to_dict(), **details}, promote=promote)
    return LinearRanker.from_json(ranker.to_json(), report.version), report


POSITIVE_TYPES = ("click", "cart", "purchase")


def impression_examples(
    runtime: Runtime,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Logged impressions as examples: (x, y, request order), with the features the ranker saw.

    An impression is positive when an event for the same request and item is a click, cart,
    purchase or a rating at or above settings.positive_rating; the rest shown with it are
    negatives. Requests are numbered by time, oldest first (for a time-based split).
    """
    from sqlalchemy import or_, select

    from engine.models import Event, Impression

    threshold = runtime.settings.positive_rating
    names = runtime.searcher.feature_names
    with runtime.session() as session:
        positive = {
            (r, i)
            for r, i in session.execute(
                select(Event.request_id, Event.item_id).where(
                    Event.request_id.is_not(None),
                    or_(
                        Event.type.in_(POSITIVE_TYPES),
                        (Event.type == "rating") & (Event.value >= threshold),
                    ),
                )
            )
        }
        rows = session.execute(
            select(Impression.request_id, Impression.item_id, Impression.features).order_by(
                Impression.ts, Impression.request_id, Impression.position
            )
        ).all()
    if not rows:
        raise InvalidInput(
            "no logged impressions yet: searches log what they show; clicks that name the "
            "response's request_id label them. Or train from judgments with --judgments FILE."
        )
    x = np.zeros((len(rows), len(names)))
    y = np.zeros(len(rows))
    order = np.zeros(len(rows), dtype=np.int64)
    request_number: dict[str, int] = {}
    for n, (request_id, item_id, logged) in enumerate(rows):
        values = dict(zip(logged["names"], logged["values"], strict=True))
        x[n] = [float(values.get(name, 0.0)) for name in names]  # type: ignore[arg-type]  # features added later read as 0
        y[n] = 1.0 if (request_id, item_id) in positive else 0.0
        order[n] = request_number.setdefault(request_id, len(request_number))
    return x, y, order, names


def train_from_impressions(
    runtime: Runtime,
    *,
    promote: bool = False,
    validation_fraction: float = 0.2,
    l2: float = 1e-3,
) -> tuple[LinearRanker, TrainReport]:
    """Fit on the older requests, report AUC and log loss on the newest ones (no peeking at
    the future), then refit on all and save the model version."""
    started = time.perf_counter()
    runtime.impressions.flush()
    x, y, order, names = impression_examples(runtime)
    if y.sum() == 0 or y.sum() == len(y):
        raise InvalidInput(
            f"{len(y)} logged impressions but {int(y.sum())} positives: need clicks (events with "
            "the search's request_id) and shown-but-not-clicked results to learn from"
        )
    n_requests = int(order.max()) + 1
    cutoff = n_requests - max(1, int(n_requests * validation_fraction))
    is_val = order >= cutoff
    if y[~is_val].sum() in (0, (~is_val).sum()):
        raise InvalidInput("the older requests hold only one class of examples; log more")
    held = fit_logistic(x[~is_val], y[~is_val], names, l2=l2, balance_classes=True)
    p_val = held.probability(held.logits(x[is_val]))
    ranker = fit_logistic(x, y, names, l2=l2, balance_classes=True)
    report = TrainReport(
        version=None,
        promoted=promote,
        examples=len(y),
        positives=int(y.sum()),
        train_queries=cutoff,
        validation_queries=n_requests - cutoff,
        validation_auc=round(auc(y[is_val], p_val), 4),
        validation_log_loss=round(log_loss(y[is_val], p_val), 4),
        train_seconds=round(time.perf_counter() - started, 2),
        weights={n: round(float(w), 4) for n, w in zip(names, ranker.weights, strict=True)},
    )
    store = ModelStore(runtime.settings.model_dir)
    details = {
        "source": "impressions",
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    report.version = store.save(ranker, {**report.to_dict(), **details}, promote=promote)
    return LinearRanker.from_json(ranker.to_json(), report.version), report
