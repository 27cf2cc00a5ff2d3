"""`recsearch events FILE`: validation with line numbers, all or nothing, idempotent reloads."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from engine.runtime import Runtime
from engine.users.profile import load_user
from indexer.events import load_events
from tests.conftest import ROOT, write_jsonl
from web.cli import Context, cli

SAMPLE_EVENTS = ROOT / "data" / "events.jsonl"


def test_sample_events_load_once(built: Runtime) -> None:
    with built.write_session() as session:
        report = load_events(built, session, SAMPLE_EVENTS)
    lines = SAMPLE_EVENTS.read_text().splitlines()
    assert report.accepted and report.events.recorded == len(lines) and report.problems == []
    assert report.events.users == 20
    with built.write_session() as session:
        again = load_events(built, session, SAMPLE_EVENTS)
    assert again.events.recorded == 0 and again.events.duplicates == len(lines)
    with built.session() as session:
        user = load_user(session, "beach-lover-1")
    assert user is not None and user.event_count == sum('"beach-lover-1"' in x for x in lines)
    top = max(user.category_affinity, key=user.category_affinity.__getitem__)
    assert top in {"beach", "island"}


def test_bad_rows_named_by_line_and_nothing_written(built: Runtime, tmp_path: Path) -> None:
    rows: list[object] = [
        {"user_id": "a", "item_id": "tokyo-japan", "type": "view"},
        {"user_id": "a", "item_id": "atlantis", "type": "view"},
        "not json",
        {"user_id": "a", "item_id": "tokyo-japan", "type": "wink"},
    ]
    path = write_jsonl(tmp_path / "e.jsonl", rows)
    with built.write_session() as session:
        report = load_events(built, session, path)
    assert not report.accepted
    assert [(p.line, p.field) for p in report.problems] == [
        (2, "item_id"),
        (3, "(row)"),
        (4, "type"),
    ]
    with built.session() as session:
        assert load_user(session, "a") is None
    rejects = tmp_path / "rejects.jsonl"
    with built.write_session() as session:
        report = load_events(built, session, path, skip_invalid=True, rejects_path=rejects)
    assert report.accepted and report.events.recorded == 1 and report.rejected == 3
    assert [json.loads(x)["line"] for x in rejects.read_text().splitlines()] == [2, 3, 4]


def test_csv_events_through_the_command(built: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        "user_id,item_id,type,value,ts,event_id\n"
        "c,tokyo-japan,view,,2026-10-01T10:00:00Z,x1\n"
        "c,kyoto-japan,rating,4.5,1790000000,x2\n"
    )
    context = Context(built.settings, quiet=True, runtime=built)
    result = CliRunner().invoke(cli, ["events", str(path)], obj=context, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 recorded, 0 duplicates, 0 rejected; 1 users updated" in result.output
    result = CliRunner().invoke(cli, ["search", "", "--user", "c", "-k", "3"], obj=context)
    assert result.exit_code == 0 and "recommend" in result.output


def test_train_from_events_command(built: Runtime) -> None:
    with built.write_session() as session:
        load_events(built, session, SAMPLE_EVENTS)
    context = Context(built.settings, quiet=True, runtime=built)
    result = CliRunner().invoke(
        cli, ["train", "--from-events"], obj=context, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "model v000001" in result.output and "held-out AUC" in result.output
