"""Every job has one shape, job(runtime, session, ..., progress=...), and the caller owns the
transaction: a job never commits or rolls back the caller's session (issue 8, section 3)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from engine.catalog.items import ItemIn, upsert_items
from engine.runtime import Runtime
from engine.store.models import Event, Item
from indexer.build import build
from indexer.events import load_events
from indexer.ingest import ingest
from indexer.train import train_from_events, train_from_impressions, train_from_judgments
from tests.conftest import SAMPLE_CATALOG, write_jsonl

JOBS = [ingest, load_events, build, train_from_judgments, train_from_impressions, train_from_events]


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j.__name__)
def test_every_job_takes_runtime_session_and_progress(job: Any) -> None:
    parameters = inspect.signature(job).parameters
    assert list(parameters)[:2] == ["runtime", "session"]
    assert parameters["progress"].kind is inspect.Parameter.KEYWORD_ONLY


def count(runtime: Runtime, model: Any) -> int:
    with runtime.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_caller_that_rolls_back_keeps_nothing(runtime: Runtime, tmp_path: Path) -> None:
    events = write_jsonl(
        tmp_path / "e.jsonl", [{"user_id": "u", "item_id": "kyoto-japan", "type": "click"}]
    )
    with runtime.sessions() as session:
        assert ingest(runtime, session, SAMPLE_CATALOG).accepted
        assert load_events(runtime, session, events).accepted
        session.rollback()
    assert count(runtime, Item) == 0 and count(runtime, Event) == 0
    with runtime.write_session() as session:
        ingest(runtime, session, SAMPLE_CATALOG)
        load_events(runtime, session, events)
    assert count(runtime, Item) == 325 and count(runtime, Event) == 1


def test_a_rejected_file_undoes_only_its_own_writes(runtime: Runtime, tmp_path: Path) -> None:
    bad_catalog = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "title": "A"}, {"id": "b"}])
    bad_events = write_jsonl(
        tmp_path / "e.jsonl",
        [
            {"user_id": "u", "item_id": "mine", "type": "click"},
            {"user_id": "u", "item_id": "nowhere", "type": "click"},
        ],
    )
    with runtime.write_session() as session:
        upsert_items(session, [ItemIn(id="mine", title="The caller's own write")])
        assert not ingest(runtime, session, bad_catalog).accepted
        assert not load_events(runtime, session, bad_events).accepted
        assert session.get(Item, "mine") is not None  # the transaction is still usable
    with runtime.session() as session:
        assert [i for i in session.scalars(select(Item.id))] == ["mine"]
    assert count(runtime, Event) == 0
