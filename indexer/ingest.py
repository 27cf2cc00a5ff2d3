"""The ingest job: read a JSONL or CSV catalog, validate every row, upsert the valid ones."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from engine.catalog.items import FIELDS, ItemIn, UpsertCounts, upsert_items, validate_item
from engine.core.errors import InvalidInput, Problem
from engine.core.files import make_private_dir
from engine.runtime import Runtime
from indexer.progress import Progress, no_progress

log = logging.getLogger(__name__)

_BATCH = 500
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


@dataclass
class Row:
    """One record read from a file: its first line number and either a value or a problem."""

    line: int
    value: Any = None
    problem: Problem | None = None
    raw_text: str | None = None


@dataclass
class LoadReport:
    """What loading a file did: rows read, problems by line, rejects, and whether its rows
    were accepted (they are committed with the caller's transaction)."""

    source: str
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    rejected: int = 0
    rejects_path: Path | None = None
    accepted: bool = False


@dataclass
class IngestReport(LoadReport):
    valid: int = 0
    counts: UpsertCounts = field(default_factory=UpsertCounts)


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInput(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            "use .jsonl (JSON Lines) or .csv"
        )
    return fmt


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))


def read_rows(
    path: Path,
    fields: tuple[str, ...] = FIELDS,
    convert: Callable[[int, dict[str, str]], Row] | None = None,
) -> Iterator[Row]:
    """Records of a JSONL or CSV file, each with its first line number; never raises per row.

    CSV columns must be among fields (catalog files also allow attributes.<name>); convert
    turns a CSV row's cells into the JSON shape (default: the catalog's rules).
    """
    if detect_format(path) == "jsonl":
        yield from _read_jsonl(path)
    else:
        yield from _read_csv(path, fields, convert or _csv_row)


def _read_jsonl(path: Path) -> Iterator[Row]:
    with open(path, "rb") as fh:
        for line_no, raw_line in enumerate(fh, start=1):
            try:
                text = raw_line.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield Row(line_no, problem=Problem("(row)", f"not valid UTF-8: {exc.reason}"))
                continue
            if not text.strip():
                continue
            value, problem = _json_line(text)
            yield Row(line_no, value=value, problem=problem, raw_text=text.rstrip("\r\n"))


def _json_line(text: str) -> tuple[Any, Problem | None]:
    """One JSONL line parsed, or the reason it cannot be (never an exception)."""
    try:
        return json.loads(text, parse_constant=_no_constants), None
    except json.JSONDecodeError as exc:
        return None, Problem("(row)", f"not valid JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return None, Problem("(row)", "not valid JSON: nested too deeply")
    except ValueError as exc:  # NaN/Infinity, or an integer too long to convert
        return None, Problem("(row)", f"not valid JSON: {exc}")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _read_csv(
    path: Path, fields: tuple[str, ...], convert: Callable[[int, dict[str, str]], Row]
) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InvalidInput(f"{path}:1: cannot read the CSV header: {exc}") from None
        columns = [c.strip() for c in header]
        prefixed = fields is FIELDS  # only catalog files have attributes.<name> columns
        bad = [c for c in columns if c not in fields and not (prefixed and "." in c)]
        bad += [c for c in columns if "." in c and not c.startswith("attributes.")]
        bad = list(dict.fromkeys(bad))
        if bad:
            extra = " and attributes.<name>" if prefixed else ""
            raise InvalidInput(
                f"{path}:1: unknown column(s) {', '.join(map(repr, bad))}; allowed columns are "
                f"{', '.join(fields)}{extra}"
            )
        previous_end = 1
        while True:
            start = previous_end + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                yield Row(start, problem=Problem("(row)", f"unreadable CSV: {exc}"))
                return
            previous_end = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(columns):
                yield Row(
                    start,
                    problem=Problem(
                        "(row)", f"has {len(record)} cells but the header has {len(columns)}"
                    ),
                    raw_text=",".join(record),
                )
                continue
            yield convert(start, dict(zip(columns, record, strict=True)))


def _csv_row(line: int, cells: dict[str, str]) -> Row:
    """CSV cells → the JSON shape: tags as a JSON array or `a|b|c`, attributes as JSON or
    `attributes.<name>` columns with numbers and true/false recognized."""
    out: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for name, cell in cells.items():
        cell = cell.strip()
        if not cell:
            continue
        if name == "tags":
            if cell.startswith("["):
                try:
                    out["tags"] = json.loads(cell)
                except json.JSONDecodeError as exc:
                    return Row(line, problem=Problem("tags", f"not a valid JSON array: {exc.msg}"))
            else:
                out["tags"] = [t for t in (p.strip() for p in cell.split("|")) if t]
        elif name == "attributes":
            try:
                parsed = json.loads(cell)
            except json.JSONDecodeError as exc:
                return Row(
                    line, problem=Problem("attributes", f"not a valid JSON object: {exc.msg}")
                )
            out["attributes"] = parsed
        elif name.startswith("attributes."):
            attributes[name.removeprefix("attributes.")] = _scalar(cell)
        else:
            out[name] = cell
    if attributes:
        merged = out.get("attributes")
        out["attributes"] = {**(merged if isinstance(merged, dict) else {}), **attributes}
    return Row(line, value=out, raw_text=json.dumps(cells, ensure_ascii=False))


def _scalar(cell: str) -> str | int | float | bool:
    lowered = cell.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(cell)  # type: ignore[operator, no-any-return]
        except ValueError:
            pass
    return cell


def ingest(
    runtime: Runtime,
    session: Session,
    path: Path,
    *,
    skip_invalid: bool = False,
    rejects_path: Path | None = None,
    progress: Progress = no_progress,
) -> IngestReport:
    """Validate every row of a catalog file and upsert the valid ones in the caller's
    transaction (the caller commits; a write session, so SQLite takes its lock up front).

    All or nothing by default: any bad row undoes this file's writes (a savepoint, so the
    caller's transaction stays usable) and the report lists every problem; `accepted` says
    whether the rows were kept. With skip_invalid the valid rows are kept and the bad ones
    written, with their reasons, to rejects_path (JSONL). Re-ingesting an unchanged file
    changes nothing.
    """
    source = str(path)
    if not path.is_file():
        raise InvalidInput(f"{source}: no such file")
    report = IngestReport(source=source)
    total = count_lines(path)
    seen: dict[str, int] = {}
    batch: list[ItemIn] = []
    rejects: list[dict[str, Any]] = []
    progress("ingest", 0, total)

    savepoint = session.begin_nested()
    for row in read_rows(path):
        report.rows += 1
        problems = [row.problem] if row.problem else []
        item: ItemIn | None = None
        if not problems:
            try:
                item = validate_item(row.value, line=row.line, source=source)
            except InvalidInput as exc:
                problems = exc.problems
        if item is not None and item.id in seen:
            problems = [Problem("id", f"duplicate id {item.id!r}; first on line {seen[item.id]}")]
            item = None
        if item is None:
            located = [Problem(p.field, p.message, line=row.line, source=source) for p in problems]
            report.problems.extend(located)
            rejects.append(reject_entry(row, located))
            continue
        seen[item.id] = row.line
        report.valid += 1
        if not report.problems or skip_invalid:
            batch.append(item)
        if len(batch) >= _BATCH:
            report.counts.add(upsert_items(session, batch))
            batch.clear()
        if report.rows % 1000 == 0:
            progress("ingest", row.line, total)

    report.rejected = len(rejects)
    if report.problems and not skip_invalid:
        savepoint.rollback()
        report.counts = UpsertCounts()
        progress("ingest", total, total)
        return report
    report.counts.add(upsert_items(session, batch))
    savepoint.commit()
    if rejects and rejects_path is not None:
        report.rejects_path = write_rejects(rejects_path, rejects)
    report.accepted = True
    progress("ingest", total, total)
    log.info("ingested %s: %s", source, report.counts)
    return report


def reject_entry(row: Row, problems: list[Problem]) -> dict[str, Any]:
    """One line of a rejects file: where, why, and the row as read."""
    return {
        "line": row.line,
        "errors": [p.to_dict() for p in problems],
        "row": row.value if row.value is not None else row.raw_text,
    }


def write_rejects(path: Path, rejects: list[dict[str, Any]]) -> Path:
    make_private_dir(path.parent)  # rejected rows may hold personal data (events)
    with open(path, "w", encoding="utf-8") as fh:
        for reject in rejects:
            fh.write(json.dumps(reject, ensure_ascii=False, default=str) + "\n")
    return path
