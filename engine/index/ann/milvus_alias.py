"""Moving a Milvus alias between version collections (publish, rollback) without losing
writes, and dropping the collections of pruned or crashed builds.

Rows written (upserted) between builds carry written_at (ms since the epoch; 0 for rows a
build loaded). When the alias moves to another collection, rows written to the one it leaves
since the other read the catalog are copied over, unless the target already holds a later
write of the same id: writes made during a build, or since the version rolled back to,
still serve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.core.config import Settings
from engine.core.errors import NotReady
from engine.index.ann.milvus import STAMP, WRITE_CHUNK
from engine.index.ann.milvus_client import client, remember
from engine.index.ann.milvus_filter import one_of
from engine.index.ann.milvus_rows import FIELDS, in_layout, layout_of

log = logging.getLogger(__name__)

# An upsert's written_at comes from its writer's clock and the catalog's read time from the
# builder's: copy rows this much older too, so a skew between hosts loses nothing.
COPY_MARGIN_MS = 60_000
# A collection this old that no published version names is left over from a crashed build.
STALE_COLLECTION = timedelta(hours=24)


def alias_target(milvus: Any, alias: str) -> str | None:
    """The collection the alias names, or None before the first build."""
    if alias not in milvus.list_aliases().get("aliases", []):
        return None
    return str(milvus.describe_alias(alias)["collection_name"])


def make_serving(description: dict[str, Any], catalog_read_at: str | None) -> Callable[[], None]:
    """Point the version's alias at its collection; return the undo.

    Rows written (upserted) to the collection the alias leaves since this version read the
    catalog are copied over first-come (a newer row already in the target is kept), so
    writes made during a build, or since the version being rolled back to, still serve.
    Raises NotReady when the version's collection is gone.
    """
    milvus = client(description["uri"])
    alias, target = description["alias"], description["collection"]
    if not milvus.has_collection(target):
        raise NotReady(
            f"Milvus collection {target!r} at {description['uri']} is gone: this version "
            "cannot serve"
        )
    previous = alias_target(milvus, alias)
    if previous == target:
        return lambda: None
    if previous is None:
        milvus.create_alias(target, alias)
    else:
        milvus.alter_alias(target, alias)

    def undo() -> None:
        if previous is None:
            milvus.drop_alias(alias)
        else:
            milvus.alter_alias(previous, alias)

    try:
        if previous is not None and catalog_read_at and milvus.has_collection(previous):
            since = _epoch_ms(catalog_read_at) - COPY_MARGIN_MS
            copied = copy_written_since(milvus, previous, target, since)
            if copied:
                log.info("copied %d rows written since the build from %s", copied, previous)
    except BaseException:
        undo()
        raise
    log.info("Milvus alias %s now names %s", alias, target)
    return undo


def copy_written_since(milvus: Any, source: str, target: str, since_ms: int) -> int:
    """Upsert into target the rows source got from writers at or after since_ms, unless the
    target holds a row for the id written later. Returns how many rows were copied."""
    state = str(milvus.get_load_state(source).get("state", ""))
    if not state.endswith("Loaded"):
        milvus.load_collection(source)
    fields = FIELDS
    layout = layout_of(milvus, target)  # rows move between layouts on a rollback
    batches = milvus.query_iterator(
        source,
        batch_size=WRITE_CHUNK,
        filter=f"written_at >= {int(max(since_ms, 1))}",
        output_fields=fields,
        consistency_level="Strong",  # every write acknowledged so far, whatever the bound
    )
    copied = 0
    try:
        while True:
            batch = batches.next()
            if not batch:
                break
            held = milvus.query(
                target,
                filter=one_of("id", (r["id"] for r in batch)),
                output_fields=["id", "written_at"],
                consistency_level="Strong",
            )
            newer_in_target = {r["id"]: int(r["written_at"]) for r in held}
            fresh = [
                in_layout(r, layout)
                for r in batch
                if int(r["written_at"]) > newer_in_target.get(r["id"], -1)
            ]
            if fresh:
                milvus.upsert(target, fresh)
                copied += len(fresh)
    finally:
        batches.close()
    return copied


def drop_collections(
    description: dict[str, Any], names: Iterable[str], *, keep: Iterable[str] = ()
) -> list[str]:
    """Drop the named collections (pruned versions'), never the alias's nor those in keep."""
    milvus = client(description["uri"])
    spared = {alias_target(milvus, description["alias"]), *keep}
    dropped = []
    for name in names:
        if name not in spared and milvus.has_collection(name):
            milvus.drop_collection(name)
            dropped.append(name)
    if dropped:
        log.info("dropped Milvus collections %s", ", ".join(dropped))
    return dropped


def stale_collections(settings: Settings, named: Iterable[str]) -> list[str]:
    """Collections of this alias that no published version names and that a crashed build
    left more than a day ago (a build running now is younger)."""
    remember(settings)
    milvus = client(settings.milvus_target)
    prefix = settings.milvus_collection + "_"
    cutoff = datetime.now(UTC) - STALE_COLLECTION
    known = set(named)
    stale = []
    for name in milvus.list_collections():
        if not name.startswith(prefix) or name in known:
            continue
        stamp = name[len(prefix) :].split("_")[0]
        try:
            made = datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)
        except ValueError:
            continue  # not one of ours
        if made < cutoff:
            stale.append(name)
    return stale


def _epoch_ms(iso: str) -> int:
    """A manifest's timestamp (naive means UTC, as engine.core.clock writes them) in ms."""
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
