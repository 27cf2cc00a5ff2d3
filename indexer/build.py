"""The build job: embed the catalog, build an ANN index, measure recall, publish a version."""

from __future__ import annotations

import logging
import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from engine import __version__
from engine.catalog.items import (
    prune_tombstones,
    settled_before,
)
from engine.core.clock import utcnow
from engine.core.config import Settings
from engine.core.errors import Conflict, InvalidInput
from engine.encoder.chunking import ChunkSpec
from engine.encoder.embedder import Embedder
from engine.encoder.prompts import built_document_prompt
from engine.index.ann import RowLabels, create_index
from engine.index.ann.faiss import choose_factory
from engine.index.artifact import IndexStore, write_artifact_files
from engine.index.delta import manifest_watermark
from engine.index.encoder_store import build_encoder, tuned_version
from engine.index.lexical import LexicalIndex
from engine.runtime import Runtime
from engine.store.models import IndexVersion
from indexer.chunking import chunk_catalog, index_chunks
from indexer.embedding import EmbeddingSite, LocalEmbedding, embed_catalog, load_catalog
from indexer.progress import Progress, no_progress
from indexer.recall import measure_recall

log = logging.getLogger(__name__)

_ADD_CHUNK = 10_000
# Deletions younger than this are kept whatever the versions (see _prune_tombstones).
TOMBSTONE_GRACE = timedelta(days=1)


@dataclass
class BuildReport:
    version: str | None
    item_count: int
    factory: str
    params: dict[str, Any]
    recall_at_10: float | None
    build_seconds: float
    embed_seconds: float
    embedded: int
    reused: int
    items_per_second: float
    skipped: bool = False
    pruned: list[str] = field(default_factory=list)
    # Where new texts were embedded (the manifest's "embedding"); empty when skipped.
    embedding: dict[str, Any] = field(default_factory=dict)


def build(
    runtime: Runtime,
    session: Session,
    *,
    if_stale: bool = False,
    settings: Settings | None = None,
    encoder: str | None = None,
    progress: Progress = no_progress,
) -> BuildReport:
    """Embed every item, build and check the index, publish it as the next version.

    Reads the catalog through the caller's session and writes nothing to it: the version's
    row is recorded in a short transaction of its own right after the publish, because it
    belongs to the published folder, and because on SQLite a write at the end of a
    minutes-long read transaction fails once anyone else has written meanwhile.

    Raises InvalidInput on an empty catalog and Conflict when measured recall@10 is under
    settings.min_recall (nothing is published then). With if_stale, a catalog and setup
    identical to the current version's skips the build. settings, when given, replace the
    runtime's for this build (e.g. another index type). encoder: the tuned encoder version to
    embed with (default: the promoted one, else RECSEARCH_MODEL; engine.index.encoder_store).
    A crash at any point leaves the previous version serving.

    With settings.ray_address, new texts are embedded on that Ray cluster; an address that
    does not answer raises NotReady naming it within seconds, before the catalog is read.
    """
    settings = settings or runtime.settings
    started = time.perf_counter()
    if settings.ray_address:  # before the model loads and the catalog is read
        from indexer.ray_embedding import check_reachable

        check_reachable(settings.ray_address)
    name, encoder_settings = build_encoder(settings, encoder)
    embedder = runtime.embedder_for(name)
    site = _embedding_site(settings.replace(model=encoder_settings.model), embedder)
    store = IndexStore(settings.index_dir)
    # Items written after this moment are served from the delta until the next build. Not
    # "now": a write transaction still open now may commit rows stamped earlier (PostgreSQL).
    catalog_read_at = settled_before(session, runtime.clock())
    rows = load_catalog(session, embedder.name, progress)
    n = len(rows.ids)
    if n == 0:
        raise InvalidInput("the catalog is empty: run `recsearch ingest FILE` before building")
    factory = choose_factory(settings, n)
    fingerprint = rows.fingerprint()

    current = store.current_version()
    previous = store.manifest(current) if current else None
    if if_stale and previous and _same_build(previous, fingerprint, factory, embedder, settings):
        log.info("index %s is up to date with the catalog; nothing to build", current)
        return BuildReport(
            version=current,
            item_count=n,
            factory=factory,
            params=dict(previous["index"].get("params", {})),
            recall_at_10=previous.get("recall_at_10"),
            build_seconds=time.perf_counter() - started,
            embed_seconds=0.0,
            embedded=0,
            reused=n,
            items_per_second=0.0,
            skipped=True,
        )

    vectors, reused, embed_s = embed_catalog(
        rows, embedder, store, previous, progress, session, site
    )
    chunked = chunk_catalog(rows, embedder, site, store, previous, session, progress, settings)

    if settings.vector_store == "milvus":
        _drop_stale_collections(settings, store)
    labels = RowLabels(
        rows.ids, rows.categories, [i.tags for i in rows.items], [i.attributes for i in rows.items]
    )
    index = create_index(settings.vector_store, embedder.dim, n, settings, labels)
    staging: Path | None = None
    try:
        progress("index", 0, n)
        for start in range(0, n, _ADD_CHUNK):
            index.add(vectors[start : start + _ADD_CHUNK])
            progress("index", min(n, start + _ADD_CHUNK), n)

        recall = measure_recall(index, vectors, settings.recall_sample, progress)
        if chunked is not None:
            index_chunks(chunked, settings, settings.recall_sample)
            if chunked.recall_at_10 is not None and chunked.recall_at_10 < recall:
                recall = chunked.recall_at_10  # the gate holds for both indexes
        progress("lexical", 0, n)
        lexical = LexicalIndex.build(rows.texts)
        progress("lexical", n, n)
        if recall < settings.min_recall:
            raise Conflict(
                f"measured recall@10 {recall:.3f} is below RECSEARCH_MIN_RECALL "
                f"{settings.min_recall:.3f} for index {index.description['factory']!r}: not "
                "published; raise efSearch/nprobe or choose another index type"
            )

        staging = store.stage()
        embedding = site.describe()
        index_section = index.save(staging)
        lexical.save(staging)
        build_s = time.perf_counter() - started
        manifest = {
            "version": None,
            "model": {
                "name": embedder.name,
                "dimension": embedder.dim,
                "normalized": True,
                "encoder": embedder.batch_encoder,
                "encoder_version": tuned_version(name),
                **embedder.prompts.manifest_fields(),
            },
            "metric": "inner_product",
            "index": index_section,
            "vector_store": _vector_store_section(index_section),
            "lexical": {"backend": "bm25s", "stemmer": "english", "stopwords": "en"},
            "item_count": n,
            "catalog_fingerprint": fingerprint,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "catalog_read_at": catalog_read_at.isoformat(),
            "build_seconds": round(build_s, 3),
            "embed_seconds": round(embed_s, 3),
            "embedded": n - reused,
            "reused_embeddings": reused,
            "embedding": embedding,
            "recall_at_10": recall,
            "recall_sample": min(settings.recall_sample, n),
            "chunks": None if chunked is None else chunked.save(staging),
            "engine_version": __version__,
            "host": platform.node(),
        }
        write_artifact_files(
            staging,
            manifest=manifest,
            ids=rows.ids,
            categories=rows.categories,
            text_hashes=rows.text_hashes,
            vectors=vectors,
            items=rows.items,
        )
        progress("publish", 0, 1)  # staged and durable; the next step makes it live
        version = store.publish(staging)
    except BaseException:
        # Nothing was published: a Milvus collection, which lives outside the staging
        # folder, goes with the build (a crash leaves it to _drop_stale_collections).
        try:
            index.discard()
        except Exception:
            log.warning("could not drop the unpublished build's index", exc_info=True)
        if staging is not None:  # the partial version (a full disk, a cancel): never served
            shutil.rmtree(staging, ignore_errors=True)
        raise
    with runtime.session() as record:
        record.add(
            IndexVersion(
                version=version,
                created_at=utcnow(),
                item_count=n,
                index_type=index_section["factory"],
                recall_at_10=recall,
                build_seconds=build_s,
                path=str((settings.index_dir / version).resolve()),
            )
        )
    pruned = store.prune(settings.keep_versions)
    _prune_tombstones(runtime, store)
    progress("publish", 1, 1)
    embedded = n - reused
    log.info("published index %s: %d items, recall@10 %.3f", version, n, recall)
    return BuildReport(
        version=version,
        item_count=n,
        factory=index_section["factory"],
        params=dict(index_section["params"]),
        recall_at_10=recall,
        build_seconds=build_s,
        embed_seconds=embed_s,
        embedded=embedded,
        reused=reused,
        items_per_second=(embedded / embed_s) if embed_s > 0 and embedded else 0.0,
        pruned=pruned,
        embedding=embedding,
    )


def _embedding_site(settings: Settings, embedder: Embedder) -> EmbeddingSite:
    """Where this build embeds new texts: a Ray cluster when settings name one, else here."""
    if not settings.ray_address:
        return LocalEmbedding(embedder)
    from indexer.ray_embedding import RayEmbedding

    return RayEmbedding(settings, embedder)


def _prune_tombstones(runtime: Runtime, store: IndexStore) -> None:
    """Forget deletions that no kept version needs: each version read the catalog after
    them, so none holds the item (rollback only goes to kept versions). A day's worth stays
    regardless, for readers that have not yet seen them. A kept version whose manifest does
    not say when it read the catalog keeps every deletion. Housekeeping: the version is
    published, so a failure here is a warning, and the next build tries again."""
    try:
        manifests = [store.manifest(v) for v in store.versions()]
        if not manifests:
            return
        if not all(m.get("catalog_read_at") or m.get("built_at") for m in manifests):
            log.info("a kept index version does not say when it read the catalog: deletions kept")
            return
        oldest = min(manifest_watermark(m) for m in manifests)
        with runtime.write_session() as session:
            gone = prune_tombstones(session, min(oldest, runtime.clock() - TOMBSTONE_GRACE))
    except Exception:
        log.warning("could not forget old deletions; the next build tries again", exc_info=True)
        return
    if gone:
        log.info("forgot %d deletions older than every kept version", gone)


def _vector_store_section(index_section: dict[str, Any]) -> dict[str, Any]:
    """Where the version's vectors are searched: the manifest's "vector_store"."""
    section = {"backend": index_section["backend"]}
    if index_section["backend"] == "milvus":
        for key in ("uri", "collection", "alias"):
            section[key] = index_section[key]
    return section


def _same_store(index: dict[str, Any], settings: Settings) -> bool:
    """Whether a version's vectors are where settings would put them now."""
    if index.get("backend", "faiss") != settings.vector_store:
        return False
    if settings.vector_store != "milvus":
        return True
    from engine.index.ann.milvus import shown_uri

    return (
        index.get("uri") == shown_uri(settings.milvus_target)
        and index.get("alias") == settings.milvus_collection
    )


def _drop_stale_collections(settings: Settings, store: IndexStore) -> None:
    """Drop collections that crashed builds left behind (a day old, named by no version)."""
    from engine.index.ann.milvus import client
    from engine.index.ann.milvus_alias import stale_collections

    named = []
    for version in store.versions():
        index = store.manifest(version).get("index", {})
        if index.get("backend") == "milvus":
            named.append(index["collection"])
    milvus = client(settings.milvus_target)
    for name in stale_collections(settings, named):
        log.warning("dropping Milvus collection %s: left by a build that did not finish", name)
        milvus.drop_collection(name)


def _same_build(
    previous: dict[str, Any],
    fingerprint: str,
    factory: str,
    embedder: Embedder,
    settings: Settings,
) -> bool:
    index = previous.get("index", {})
    return (
        _same_store(index, settings)
        and previous.get("catalog_fingerprint") == fingerprint
        and previous.get("model", {}).get("name") == embedder.name
        and built_document_prompt(previous) == embedder.prompts.document
        and ChunkSpec.from_dict(previous.get("chunks")) == _chunk_spec(embedder, settings)
        and index.get("factory") == factory
        and index.get("params", {}).get("efSearch", settings.hnsw_ef_search)
        == settings.hnsw_ef_search
    )


def _chunk_spec(embedder: Embedder, settings: Settings) -> ChunkSpec | None:
    chunker = embedder.chunker(settings)
    return None if chunker is None else chunker.spec
