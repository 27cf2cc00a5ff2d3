"""What the serving index is, for the CLI and the admin API alike."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.index.artifact import IndexStore
from engine.index.schemas import IndexStatus
from engine.store.models import Item


def index_status(store: IndexStore, session: Session) -> IndexStatus | None:
    """The current index version's facts, or None when none is published.

    Keys: version, items, factory, params, size_bytes (the version folder on disk),
    model, dim and metric (the encoder's vectors and how they compare), is_exact, index_type,
    built_at, recall_at_10, vector_store ({"backend": "faiss"}, or Milvus's uri, collection
    and alias), and delta_items: items written since the build read the catalog, which
    searches serve from the delta until the next build (with Milvus, from the collection).
    Reads the manifest and one SQL count; loads no index and no encoder.
    """
    version = store.current_version()
    if version is None:
        return None
    manifest = store.manifest(version)
    folder = store.folder(version)
    index = manifest["index"]
    return IndexStatus(
        version=version,
        items=manifest["item_count"],
        factory=index["factory"],
        params=index.get("params", {}),
        size_bytes=sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        built_at=manifest.get("built_at"),
        recall_at_10=manifest.get("recall_at_10"),
        vector_store=manifest.get("vector_store", {"backend": index.get("backend", "faiss")}),
        delta_items=_written_since(session, manifest),
        model=manifest.get("model", {}).get("name"),
        dim=manifest.get("model", {}).get("dimension"),
        metric=manifest.get("metric"),
        is_exact=index.get("is_exact"),
        index_type=index.get("index_type"),
    )


def _written_since(session: Session, manifest: dict[str, Any]) -> int:
    # The same watermark the delta follows (engine/index/delta.py): catalog_read_at, or built_at
    # for versions built before it was recorded.
    read_at = manifest.get("catalog_read_at")
    if read_at:
        watermark = datetime.fromisoformat(read_at)
    else:
        watermark = datetime.fromisoformat(manifest["built_at"]).replace(tzinfo=None)
    query = select(func.count()).select_from(Item).where(Item.updated_at >= watermark)
    return int(session.scalar(query) or 0)
