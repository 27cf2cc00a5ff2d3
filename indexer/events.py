"""The events job: load a history log (JSONL or CSV) into SQL and the users' features."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from engine.core.clock import utcnow
from engine.core.config import Settings
from engine.core.errors import InvalidInput, Problem
from engine.runtime import Runtime
from engine.users.events import EVENT_FIELDS, EventIn, validate_event
from engine.users.recording import EventReport, record_events, unknown_items
from indexer.ingest import (
    LoadReport,
    Row,
    count_lines,
    read_rows,
    reject_entry,
    write_rejects,
)
from indexer.progress import Progress, no_progress

log = logging.getLogger(__name__)

_BATCH = 2_000


@dataclass
class EventsLoadReport(LoadReport):
    events: EventReport = field(default_factory=EventReport)


def _csv_event(line: int, cells: dict[str, str]) -> Row:
    return Row(line, value={k: v.strip() for k, v in cells.items() if v.strip()})


def load_events(
    runtime: Runtime,
    session: Session,
    path: Path,
    *,
    skip_invalid: bool = False,
    rejects_path: Path | None = None,
    progress: Progress = no_progress,
) -> EventsLoadReport:
    """Validate every event of a file and record the valid ones in the caller's transaction
    (the caller commits; use a write session, so SQLite takes its lock up front).

    All or nothing by default, like ingest: any bad row (bad field, unknown item) undoes
    this file's writes (a savepoint) and the report lists every problem with its line. With
    skip_invalid the valid events are kept and the bad rows written with their reasons to
    rejects_path. Events whose event_id is already stored are counted as duplicates.
    """
    source = str(path)
    if not path.is_file():
        raise InvalidInput(f"{source}: no such file")
    settings: Settings = runtime.settings
    report = EventsLoadReport(source=source)
    total = count_lines(path)
    rejects: list[dict[str, Any]] = []
    now = utcnow()
    progress("events", 0, total)

    savepoint = session.begin_nested()
    batch: list[tuple[Row, EventIn]] = []

    def flush() -> None:
        missing = unknown_items(session, (e.item_id for _, e in batch))
        valid = []
        for row, event in batch:
            if event.item_id in missing:
                problem = Problem(
                    "item_id", f"unknown item {event.item_id!r}", line=row.line, source=source
                )
                report.problems.append(problem)
                rejects.append(reject_entry(row, [problem]))
            else:
                valid.append(event)
        if not report.problems or skip_invalid:
            report.events.add(record_events(session, valid, settings, runtime.vectors))
        batch.clear()

    for row in read_rows(path, EVENT_FIELDS, _csv_event):
        report.rows += 1
        problems = [row.problem] if row.problem else []
        event: EventIn | None = None
        if not problems:
            try:
                event = validate_event(
                    row.value,
                    now=now,
                    max_skew_s=settings.max_clock_skew_s,
                    line=row.line,
                    source=source,
                )
            except InvalidInput as exc:
                problems = exc.problems
        if event is None:
            located = [Problem(p.field, p.message, line=row.line, source=source) for p in problems]
            report.problems.extend(located)
            rejects.append(reject_entry(row, located))
            continue
        batch.append((row, event))
        if len(batch) >= _BATCH:
            flush()
            progress("events", row.line, total)
    flush()

    report.rejected = len(rejects)
    report.problems.sort(key=lambda p: p.line or 0)
    if report.problems and not skip_invalid:
        savepoint.rollback()
        report.events = EventReport(received=report.events.received)
        progress("events", total, total)
        return report
    savepoint.commit()
    if rejects and rejects_path is not None:
        rejects.sort(key=lambda r: r["line"])
        report.rejects_path = write_rejects(rejects_path, rejects)
    report.accepted = True
    progress("events", total, total)
    log.info("loaded events from %s: %s", source, report.events)
    return report
