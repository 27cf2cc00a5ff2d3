"""Training examples: (features, label, group) rows from judgments, from logged impressions
and the clicks that name them, or from the event history replayed point in time."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.core.errors import InvalidInput
from engine.runtime import Runtime
from engine.search.pipeline import Searcher
from engine.search.request import SearchRequest
from engine.store.models import Event, Impression
from engine.users.events import EventIn
from engine.users.state import StateView
from indexer.progress import Progress, no_progress


@dataclass(frozen=True)
class Judgment:
    query: str
    item_id: str
    grade: float


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
    session: Session,
    judgments: Sequence[Judgment],
    progress: Progress = no_progress,
    searcher: Searcher | None = None,
    states: Mapping[str, StateView] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Features of the first stage's candidates for each judged query: (x, y, query_index).

    Judged items with grade > 0 among the candidates are positives; the other candidates of
    the query are its negatives. Judged items no source found are left out: the ranker can
    only reorder candidates, and scoring them would teach it that "not retrieved" means
    relevant (their rank features are all zero).

    states: per query text, the users and items its features are read from (e.g. clicks of
    the other queries only, indexer.click_prior); a query not in it reads the live state.
    """
    by_query: dict[str, dict[str, float]] = defaultdict(dict)
    for j in judgments:
        by_query[j.query][j.item_id] = j.grade
    xs, ys, groups = [], [], []
    searcher = searcher or runtime.searcher
    k = max(searcher.settings.candidates, 1)
    for qi, (query, grades) in enumerate(by_query.items()):
        positives = [i for i, g in grades.items() if g > 0]
        stage = searcher.first_stage(
            session,
            SearchRequest(q=query, k=min(k, runtime.settings.max_k)),
            state=states.get(query) if states is not None else None,
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


POSITIVE_TYPES = ("click", "cart", "purchase")


def impression_examples(
    runtime: Runtime, session: Session
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Logged impressions as examples: (x, y, request order), with the features the ranker saw.

    An impression is positive when an event for the same request and item is a click, cart,
    purchase or a rating at or above settings.positive_rating; the rest shown with it are
    negatives. Requests are numbered by time, oldest first (for a time-based split).
    """
    from sqlalchemy import or_

    threshold = runtime.settings.positive_rating
    names = runtime.searcher.feature_names
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


def stored_events(session: Session) -> list[EventIn]:
    """The event history in the database, oldest first."""
    return [
        EventIn(e.user_id, e.item_id, e.type, e.ts, e.value, e.event_id, e.request_id)
        for e in session.scalars(select(Event).order_by(Event.ts, Event.id))
    ]


def is_positive(event: EventIn, positive_rating: float) -> bool:
    if event.type == "rating":
        return event.value is not None and event.value >= positive_rating
    return event.type in POSITIVE_TYPES


def replay_examples(
    runtime: Runtime,
    session: Session,
    events: Sequence[EventIn],
    *,
    max_per_user: int = 20,
    random_negatives: int = 5,
    searcher: Searcher | None = None,
    seed: int = 0,
    progress: Progress = no_progress,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Examples from an event history with point-in-time features.

    Events are replayed in time order into an in-memory state (the same update rules as
    record_events). For each user's latest max_per_user positive events, just before applying
    the event, the first stage runs in recommendation mode on the state as of that moment:
    the event's item is the positive, the other candidates are hard negatives, and a few
    random items are easy negatives. Returns (x, y, example time order, names); events the
    first stage could not retrieve give no example.
    """

    from engine.store.models import Item
    from engine.users.replay import ReplayState

    searcher = searcher or runtime.searcher
    settings = runtime.settings
    artifact = searcher.artifact()
    vectors = artifact.vectors()
    vector_of: dict[str, object] = {
        item_id: vectors[row] for row, item_id in enumerate(artifact.ids)
    }
    meta = {
        r.id: (r.category, list(r.tags or []))
        for r in session.execute(select(Item.id, Item.category, Item.tags))
    }
    ordered = sorted(events, key=lambda e: (e.ts, e.user_id, e.item_id))
    chosen: set[int] = set()
    per_user: dict[str, list[int]] = defaultdict(list)
    for n, event in enumerate(ordered):
        if is_positive(event, settings.positive_rating):
            per_user[event.user_id].append(n)
    for positions in per_user.values():
        chosen.update(positions[-max_per_user:])
    state = ReplayState(settings, meta, vector_of)
    rng = np.random.default_rng(seed)
    all_ids = artifact.ids
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    order: list[np.ndarray] = []
    done = 0
    for n, event in enumerate(ordered):
        if n in chosen:
            state.now = event.ts
            randoms = [
                all_ids[i] for i in rng.choice(len(all_ids), random_negatives, replace=False)
            ]
            request = SearchRequest(user_id=event.user_id, k=10, exclude_seen="all")
            stage = searcher.first_stage(session, request, include=randoms, state=state)
            labels = np.array(
                [1.0 if c.item_id == event.item_id else 0.0 for c in stage.candidates]
            )
            if (
                labels.sum() == 1.0
                and stage.candidates[int(labels.argmax())].item_id not in randoms
            ):
                xs.append(stage.x)
                ys.append(labels)
                order.append(np.full(len(labels), len(order)))
            done += 1
            if done % 100 == 0 or done == len(chosen):
                progress("replay", done, len(chosen))
        state.apply(event)
    if not xs:
        raise InvalidInput("no positive event could be replayed into an example")
    return np.vstack(xs), np.concatenate(ys), np.concatenate(order), searcher.feature_names
