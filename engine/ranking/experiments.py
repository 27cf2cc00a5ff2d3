"""Online experiments: the live ranking model against a candidate, by team-draft interleaving.

A running experiment takes a share of searches (`traffic`); for each, the live model's and
the candidate's rankings of the same candidates are interleaved (engine.ranking.interleave) and the
side that contributed each shown item is logged with the impression. A positive event (a
click, cart, purchase, or a rating at or above RECSEARCH_POSITIVE_RATING) that names the
response's request_id credits its side; per clicked request the candidate wins, loses or ties,
and a two-sided sign test says whether the difference is more than chance. One experiment
runs at a time; stopping it ends the interleaving, promoting it also makes the candidate live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, or_, select
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
    model on a `traffic` share of searches; Conflict while another one runs."""
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
    running = session.scalar(select(Experiment).where(Experiment.state == "running"))
    if running is not None:
        raise Conflict(f"experiment {running.id} is running: stop it first")
    row = Experiment(
        candidate=candidate, live=live, traffic=traffic, state="running", started_at=utcnow()
    )
    session.add(row)
    session.flush()
    return report(session, row.id, positive_rating=None)


def stop(session: Session, experiment_id: int, *, state: str = "stopped") -> ExperimentOut:
    row = _get(session, experiment_id)
    if row.state != "running":
        raise Conflict(f"experiment {experiment_id} is already {row.state}")
    row.state = state
    row.stopped_at = utcnow()
    session.flush()
    return report(session, experiment_id, positive_rating=None)


def promote(session: Session, models: ModelStore, experiment_id: int) -> ExperimentOut:
    """Make the candidate live and end the experiment (state "promoted")."""
    row = _get(session, experiment_id)
    if row.state == "promoted":
        raise Conflict(f"experiment {experiment_id} is already promoted")
    models.point_current_at(row.candidate)
    row.state = "promoted"
    row.stopped_at = row.stopped_at or utcnow()
    session.flush()
    return report(session, experiment_id, positive_rating=None)


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
