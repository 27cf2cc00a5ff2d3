"""Commands that write the catalog and the event history: ingest, events, delete, import, and
the schema's upgrade."""

from __future__ import annotations

import json
from pathlib import Path

import click

from web.cli.base import (
    Context,
    cli,
    finish_load,
    load_file,
    load_options,
    pass_ctx,
    progress_bar,
)


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(obj: Context) -> None:
    """Apply pending schema migrations (every command also does this on its own)."""
    from engine.store.db import make_engine, upgrade

    engine = make_engine(obj.settings)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"database is up to date (revision {after})")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after}")


@cli.command()
@load_options("rows")
@pass_ctx
def ingest(obj: Context, file: Path, skip_invalid: bool, rejects: Path | None) -> None:
    """Validate a JSONL or CSV catalog and upsert its items (all or nothing by default)."""
    from indexer.ingest import ingest as run_ingest

    report, took = load_file(obj, run_ingest, file, skip_invalid, rejects)
    c = report.counts
    finish_load(
        file,
        report,
        f"{file}: {report.rows} rows in {took:.1f}s: {c.inserted} inserted, {c.updated} updated, "
        f"{c.unchanged} unchanged, {report.rejected} rejected",
    )


@cli.command()
@load_options("events")
@pass_ctx
def events(obj: Context, file: Path, skip_invalid: bool, rejects: Path | None) -> None:
    """Load a history log of events (JSONL or CSV) and update users' features."""
    from indexer.events import load_events

    report, took = load_file(obj, load_events, file, skip_invalid, rejects)
    e = report.events
    rate = e.received / took if took > 0 else 0.0
    finish_load(
        file,
        report,
        f"{file}: {report.rows} rows in {took:.1f}s ({rate:.0f} events/s): {e.recorded} recorded, "
        f"{e.duplicates} duplicates, {report.rejected} rejected; {e.users} users updated",
    )


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--missing-ok", is_flag=True, help="Delete the ids that exist; ignore the rest.")
@pass_ctx
def delete(obj: Context, ids: tuple[str, ...], missing_ok: bool) -> None:
    """Delete items by id (all or nothing unless --missing-ok)."""
    from engine.catalog.items import delete_items
    from engine.core.errors import InvalidInput

    with obj.runtime.write_session() as session:
        missing = delete_items(session, list(ids))
        if missing and missing_ok:
            present = [i for i in ids if i not in missing]
            if present:
                delete_items(session, present)
    if missing and not missing_ok:
        raise InvalidInput(f"no such item(s): {', '.join(map(repr, missing))}; nothing deleted")
    click.echo(f"deleted {len(ids) - len(missing)} item(s)")
    click.echo("they stop showing in search results now; run `recsearch build` to compact")


@cli.group("import")
def import_() -> None:
    """Turn public datasets into catalog items (and events)."""


@import_.command("beir")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@pass_ctx
def import_beir_cmd(obj: Context, folder: Path) -> None:
    """A BEIR folder's corpus.jsonl as items (queries and qrels are read by evaluate/train)."""
    from indexer.evaluate import import_beir

    changed = import_beir(obj.runtime, folder)
    click.echo(f"{folder}: {changed} items inserted or updated; run `recsearch build` next")


@import_.command("movielens")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@pass_ctx
def import_movielens_cmd(obj: Context, folder: Path) -> None:
    """movies.csv (+ tags.csv) as items and ratings.csv as rating events."""
    import tempfile

    from engine.catalog.items import upsert_items
    from indexer.datasets import movielens_items, movielens_ratings
    from indexer.events import load_events

    items = movielens_items(folder)
    with obj.runtime.write_session() as session:
        changed = sum(
            upsert_items(session, items[i : i + 1000]).changed for i in range(0, len(items), 1000)
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ratings.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in movielens_ratings(folder)))
        with obj.runtime.write_session() as session, progress_bar(not obj.quiet) as progress:
            report = load_events(obj.runtime, session, path, progress=progress)
    click.echo(
        f"{folder}: {len(items)} movies ({changed} changed), {report.events.recorded} ratings "
        f"recorded ({report.events.duplicates} already there)"
    )
