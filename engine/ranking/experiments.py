"""Online experiments: the live ranking model against a candidate, by team-draft interleaving.

A running experiment takes a share of searches (`traffic`); for each, the live model's and
the candidate's rankings of the same candidates are interleaved (engine.ranking.interleave) and the
side that contributed each shown item is logged with the impression. A positive event (a
click, cart, purchase, or a rating at or above RECSEARCH_POSITIVE_RATING) that names the
response's request_id credits its side; per clicked request the candidate wins, loses or ties,
and a two-sided sign test says whether the difference is more than chance. One experiment
runs at a time; stopping it ends the interleaving, promoting it also makes the candidate live.

Every change of state is decided by the database, so of callers racing (two admins, two
workers) exactly one wins and the others get Conflict naming the state they found: a start
inserts under a unique index on the running experiment, stop and promote are one UPDATE ...
WHERE state IN (the states they leave from).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.core.clock import iso_z, utcnow
from engine.core.errors import Conflict, InvalidInput, NotFound, Problem
from engine.core.reloaded import Reloaded
from engine.ranking.interleave import Side, credit, sign_test
from engine.ranking.model_store import ModelStore
from engine.ranking.ranker import LinearRanker
from engine.ranking.schemas import ExperimentOut
from engine.store.models import Event, Experiment, Impression

RELOAD_S = 1.0
MAX_EXPERIMENT_ID = 2**31 - 1
POSITIVE_TYPES = ("click", "cart", "purchase")


def start(session: Session, models: ModelStore, candidate: str, traffic: float) -> ExperimentOut:
    """Start interleaving `candidate` ("latest": the newest model version) with the live
    model on a `traffic` share of searches; Conflict naming the one that runs, if one does."""
    versions = models.versions()
    if candidate == "latest":
        if not versions:
            raise InvalidInput(
                "no trained model to experiment with: run `recsearch train` first",
                [Problem("candidate", "no model version exists")],
            )
        candidate = versions[-1]
    elif candidate not in versions:
        raise NotFound(f"model version {candidate!r}")
    live = models.current_version() or "prior"
    if candidate == live:
        raise InvalidInput(
            f"{candidate} is the live model: an experiment needs another version",
            [Problem("candidate", f"{candidate} is already live")],
        )
    _refuse_if_running(session)
    row = Experiment(
        candidate=candidate, live=live, traffic=traffic, state="running", started_at=utcnow()
    )
    try:
        with session.begin_nested():  # a savepoint: the refused insert leaves the rest usable
            session.add(row)
    except IntegrityError:
        # Another start committed between our check and our insert: the unique index on the
        # running experiment refused ours (PostgreSQL waited for that start to commit first).
        _refuse_if_running(session)
        raise Conflict("another experiment started at the same time: stop it first") from None
    return report(session, row.id, positive_rating=None)


def _refuse_if_running(session: Session) -> None:
    running = session.scalar(select(Experiment.id).where(Experiment.state == "running"))
    if running is not None:
        raise Conflict(f"experiment {running} is running: stop it first")


def stop(session: Session, experiment_id: int) -> ExperimentOut:
    """End the interleaving: running -> stopped, a compare-and-set in SQL, so of callers
    racing, one wins and the others get Conflict naming the state it left."""
    _transition(session, experiment_id, ("running",), "stopped")
    return report(session, experiment_id, positive_rating=None)


def promote(session: Session, models: ModelStore, experiment_id: int) -> ExperimentOut:
    """Make the candidate live and end the experiment: running or stopped -> promoted, one
    winner among callers racing (the others get Conflict); the live model moves only for it."""
    _transition(session, experiment_id, ("running", "stopped"), "promoted")
    # Inside the transaction that holds the row: if the move fails, the state rolls back.
    models.promote(_get(session, experiment_id).candidate)
    return report(session, experiment_id, positive_rating=None)


def _transition(session: Session, experiment_id: int, sources: tuple[str, ...], to: str) -> None:
    """UPDATE ... WHERE state IN sources: the database decides who moves the row (PostgreSQL
    holds the row lock until commit and re-checks the WHERE; SQLite writes one at a time)."""
    if not 1 <= experiment_id <= MAX_EXPERIMENT_ID:
        raise NotFound(f"experiment {experiment_id}")
    moved = session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.state.in_(sources))
        .values(state=to, stopped_at=func.coalesce(Experiment.stopped_at, utcnow()))
        .execution_options(synchronize_session=False)
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        state = session.scalar(select(Experiment.state).where(Experiment.id == experiment_id))
        if state is None:
            raise NotFound(f"experiment {experiment_id}")
        raise Conflict(f"experiment {experiment_id} is already {state}")
    session.expire_all()  # rows loaded before the UPDATE show its state when read again


def models_in_use(session: Session) -> set[str]:
    """The model versions a running experiment serves (its candidate and its live model):
    prune keeps them."""
    rows = session.execute(
        select(Experiment.candidate, Experiment.live).where(Experiment.state == "running")
    )
    return {v for row in rows for v in row if v != "prior"}


def report(
    session: Session, experiment_id: int, *, positive_rating: float | None = 4.0
) -> ExperimentOut:
    """The experiment with wins, losses, ties (over requests with a positive event) and the
    sign test's p-value."""
    row = _get(session, experiment_id)
    shown = session.execute(
        select(Impression.request_id, Impression.item_id, Impression.team).where(
            Impression.experiment_id == experiment_id
        )
    ).all()
    teams: dict[str, dict[str, Side]] = {}
    for request_id, item_id, team in shown:
        if team == "live":
            teams.setdefault(request_id, {})[item_id] = "live"
        elif team == "candidate":
            teams.setdefault(request_id, {})[item_id] = "candidate"
    positive: ColumnElement[bool] = Event.type.in_(POSITIVE_TYPES)
    if positive_rating is not None:
        positive = or_(positive, (Event.type == "rating") & (Event.value >= positive_rating))
    clicked: dict[str, list[str]] = {}
    for chunk in _chunks(list(teams)):
        rows = session.execute(
            select(Event.request_id, Event.item_id).where(Event.request_id.in_(chunk), positive)
        )
        for clicked_request, clicked_item in rows:
            if clicked_request is not None:
                clicked.setdefault(clicked_request, []).append(clicked_item)
    outcomes = [credit(teams[r], items) for r, items in clicked.items()]
    wins, losses, ties = (outcomes.count(o) for o in ("win", "loss", "tie"))
    return ExperimentOut(
        id=row.id,
        candidate=row.candidate,
        live=row.live,
        traffic=row.traffic,
        state=row.state,  # type: ignore[arg-type]  # one of the states the table allows
        started_at=iso_z(row.started_at),
        stopped_at=iso_z(row.stopped_at) if row.stopped_at else None,
        requests=len(teams),
        wins=wins,
        losses=losses,
        ties=ties,
        p_value=sign_test(wins, losses),
    )


def list_all(session: Session, *, positive_rating: float | None = 4.0) -> list[ExperimentOut]:
    ids = session.scalars(select(Experiment.id).order_by(Experiment.id.desc()).limit(20))
    return [report(session, i, positive_rating=positive_rating) for i in ids]


def _get(session: Session, experiment_id: int) -> Experiment:
    row = (
        session.get(Experiment, experiment_id) if 1 <= experiment_id <= MAX_EXPERIMENT_ID else None
    )
    if row is None:
        raise NotFound(f"experiment {experiment_id}")
    return row


def _chunks(values: list[str], size: int = 500) -> list[list[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


@dataclass(frozen=True)
class Running:
    """What a search needs of the running experiment."""

    id: int
    traffic: float
    candidate: LinearRanker


class ExperimentCache(Reloaded[Running | None]):
    """The running experiment, as one process serves it: read once, then again in the
    background every reload_s (engine.core.reloaded); invalidate() after a change here."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        models: ModelStore,
        reload_s: float = RELOAD_S,
    ) -> None:
        self._sessions = sessions
        self._models = models
        super().__init__(self._load, reload_s, "experiment")

    def _load(self, current: Running | None) -> Running | None:
        with self._sessions() as session:
            row = session.scalar(select(Experiment).where(Experiment.state == "running"))
            if row is None:
                return None
            found = (row.id, row.traffic, row.candidate)
        if current is not None and current.id == found[0]:
            return current
        return Running(found[0], found[1], self._models.load(found[2]))
