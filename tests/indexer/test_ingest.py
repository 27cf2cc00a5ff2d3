"""`ingest` on real SQLite and PostgreSQL: valid files, bad rows, idempotency, deletes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine.catalog.items import delete_items, get_item
from engine.core.errors import InvalidInput, NotFound
from engine.runtime import Runtime
from engine.store.models import Item
from indexer.ingest import ingest
from tests.conftest import SAMPLE_CATALOG, write_jsonl

GOOD = [
    {"id": "a", "title": "Alpha", "category": "city", "tags": ["x"], "attributes": {"n": 1}},
    {"id": "b", "title": "Beta", "text": "Second item"},
    {"id": "c", "title": "Gamma"},
]


def count(runtime: Runtime) -> int:
    with runtime.session() as session:
        return int(session.scalar(select(func.count()).select_from(Item)) or 0)


def test_sample_catalog_loads(runtime: Runtime) -> None:
    with runtime.session() as session:
        report = ingest(runtime, session, SAMPLE_CATALOG)
    assert report.accepted and report.problems == []
    assert report.counts.inserted == report.rows >= 300
    with runtime.session() as session:
        paris = get_item(session, "paris-france")
    assert paris.category == "city" and paris.attributes["country"] == "France"


def test_reingest_is_idempotent_and_updates_changes(runtime: Runtime, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", GOOD)
    with runtime.session() as session:
        first = ingest(runtime, session, path)
    assert (first.counts.inserted, first.counts.updated, first.counts.unchanged) == (3, 0, 0)
    with runtime.session() as session:
        before = get_item(session, "a").updated_at
        again = ingest(runtime, session, path)
    assert (again.counts.inserted, again.counts.updated, again.counts.unchanged) == (0, 0, 3)
    changed = [dict(GOOD[0], title="Alpha 2"), *GOOD[1:], {"id": "d", "title": "Delta"}]
    with runtime.session() as session:
        third = ingest(runtime, session, write_jsonl(tmp_path / "c2.jsonl", changed))
    assert (third.counts.inserted, third.counts.updated, third.counts.unchanged) == (1, 1, 2)
    with runtime.session() as session:
        a = get_item(session, "a")
        assert a.title == "Alpha 2" and a.updated_at >= before
        assert get_item(session, "b").text == "Second item"
    assert count(runtime) == 4


def test_bad_rows_change_nothing_and_are_all_reported(runtime: Runtime, tmp_path: Path) -> None:
    with runtime.session() as session:
        ingest(runtime, session, write_jsonl(tmp_path / "seed.jsonl", [GOOD[0]]))
    rows: list[object] = [
        dict(GOOD[0], title="changed"),
        {"id": "e"},
        "{not json",
        GOOD[1],
        {"id": "a", "title": "dup"},
        {"id": "f", "title": "F", "attributes": {"cost": "x", "bad": [1]}},
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with runtime.session() as session:
        report = ingest(runtime, session, path)
    assert not report.accepted
    located = [(p.line, p.field) for p in report.problems]
    assert located == [(2, "title"), (3, "(row)"), (5, "id"), (6, "attributes.bad")]
    assert all(p.source == str(path) for p in report.problems)
    assert "first on line 1" in report.problems[2].message
    assert count(runtime) == 1
    with runtime.session() as session:
        assert get_item(session, "a").title == "Alpha"  # the valid update was not applied


def test_skip_invalid_commits_valid_rows_and_writes_rejects(
    runtime: Runtime, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD[0], {"id": "x", "tags": 3}, GOOD[1]])
    rejects = tmp_path / "out" / "rejects.jsonl"
    with runtime.session() as session:
        report = ingest(runtime, session, path, skip_invalid=True, rejects_path=rejects)
    assert report.accepted and report.counts.inserted == 2 and report.rejected == 1
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert lines == [
        {
            "line": 2,
            "errors": [
                {"field": "title", "message": "is required", "line": 2, "source": str(path)},
                {
                    "field": "tags",
                    "message": "must be an array of strings, got int 3",
                    "line": 2,
                    "source": str(path),
                },
            ],
            "row": {"id": "x", "tags": 3},
        }
    ]
    assert count(runtime) == 2


def test_csv_with_the_same_columns(runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        "id,title,text,category,tags,attributes.cost,attributes.eu,created_at\n"
        'p,"Paris, France","Museums, cafés",city,art|food,180,true,2024-01-01\n'
        'r,Rome,"Multi\nline",culture,"[""history""]",120.5,false,\n'
        "bad,,x,city,,1,true,\n"
        "z,Zed,,,,,,not-a-date\n",
        encoding="utf-8",
    )
    with runtime.session() as session:
        report = ingest(runtime, session, path)
    # Rome's quoted text spans lines 3-4, so the bad rows start on lines 5 and 6.
    assert [(p.line, p.field) for p in report.problems] == [(5, "title"), (6, "created_at")]
    with runtime.session() as session:
        report = ingest(runtime, session, path, skip_invalid=True)
        paris = get_item(session, "p")
        rome = get_item(session, "r")
    assert report.counts.inserted == 2
    assert paris.title == "Paris, France" and paris.tags == ["art", "food"]
    assert paris.attributes == {"cost": 180, "eu": True}
    assert rome.text == "Multi\nline" and rome.tags == ["history"]
    assert rome.attributes == {"cost": 120.5, "eu": False}


def test_csv_unknown_column_is_named(runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,titel\na,b\n", encoding="utf-8")
    with runtime.session() as session, pytest.raises(InvalidInput, match="c.csv:1: .*'titel'"):
        ingest(runtime, session, path)


def test_unknown_extension_and_missing_file(runtime: Runtime, tmp_path: Path) -> None:
    (tmp_path / "c.xml").write_text("<x/>")
    with runtime.session() as session:
        with pytest.raises(InvalidInput, match="use .jsonl"):
            ingest(runtime, session, tmp_path / "c.xml")
        with pytest.raises(InvalidInput, match="no such file"):
            ingest(runtime, session, tmp_path / "nope.jsonl")


def test_delete_is_all_or_nothing(runtime: Runtime, tmp_path: Path) -> None:
    with runtime.session() as session:
        ingest(runtime, session, write_jsonl(tmp_path / "c.jsonl", GOOD))
    with runtime.session() as session:
        assert delete_items(session, ["a", "nope"]) == ["nope"]
    assert count(runtime) == 3
    with runtime.session() as session:
        assert delete_items(session, ["a", "b"]) == []
    with runtime.session() as session, pytest.raises(NotFound, match="'a'"):
        get_item(session, "a")
    assert count(runtime) == 1
