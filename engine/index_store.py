"""Versioned index artifacts on disk, and the CURRENT pointer that publishes one atomically.

Layout under settings.index_dir:
    CURRENT            the serving version's name, replaced with os.replace (atomic)
    v000007/           manifest.json, index.faiss, items.json (row → id, category, text hash),
                       vectors.npy ((n, dim) float32 unit vectors: reused by the next build)
    .staging-*/        a build in progress; a crash leaves one behind, never a half version
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from engine.ann import AnnIndex, load_index
from engine.errors import NotFound, NotReady
from engine.lexical import LexicalIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
ITEMS = "items.json"
VECTORS = "vectors.npy"
_VERSION_RE = re.compile(r"^v(\d{6,})$")
# A staging folder this old is left over from a crashed build, not one still running.
STALE_STAGING_S = 24 * 3600


@dataclass
class IndexArtifact:
    """A loaded index version: the ANN index plus its row → item map."""

    version: str
    folder: Path
    manifest: dict[str, Any]
    ann: AnnIndex
    ids: list[str]
    categories: list[str | None]
    text_hashes: list[str]
    _category_rows: dict[str, np.ndarray] = field(default_factory=dict)
    _row_of: dict[str, int] = field(default_factory=dict)
    _vectors: np.ndarray | None = None
    lexical: LexicalIndex | None = None

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["dimension"])

    def rows_for_category(self, category: str) -> np.ndarray:
        """Sorted int64 rows of the category (empty for an unknown one)."""
        if not self._category_rows:
            by_cat: dict[str, list[int]] = {}
            for row, cat in enumerate(self.categories):
                if cat is not None:
                    by_cat.setdefault(cat, []).append(row)
            self._category_rows = {c: np.asarray(r, dtype=np.int64) for c, r in by_cat.items()}
        return self._category_rows.get(category, np.empty(0, dtype=np.int64))

    def vectors(self) -> np.ndarray:
        """(n, dim) float32 unit vectors, memory-mapped read-only."""
        if self._vectors is None:
            self._vectors = np.load(self.folder / VECTORS, mmap_mode="r")
        return self._vectors

    def row_of(self, item_id: str) -> int | None:
        """The item's row in this version, or None if it was not in the catalog at build."""
        if not self._row_of:
            self._row_of = {item_id: row for row, item_id in enumerate(self.ids)}
        return self._row_of.get(item_id)


class VersionStore:
    """A folder of numbered versions (v000001, ...) and a CURRENT pointer to one of them.

    Index builds and trained models both publish this way: write a staging folder, rename it
    to the next number, then replace CURRENT atomically.
    """

    manifest_name = MANIFEST
    kind = "version"

    def __init__(self, root: Path) -> None:
        self.root = root

    def current_version(self) -> str | None:
        try:
            name = (self.root / CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.root / version / self.manifest_name
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise NotFound(f"{self.kind} {version!r}") from None

    def stage(self) -> Path:
        """A fresh private folder for a build to write into."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_staging()
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        staging.chmod(0o755)  # mkdtemp makes it private; a server may run as another user
        return staging

    def publish(self, staging: Path, *, make_current: bool = True) -> str:
        """Turn a staged folder into the next version and point CURRENT at it, atomically.

        The manifest in staging gets its "version" filled in. Concurrent publishers each get
        their own version number (rename fails if the name is taken).
        """
        manifest_path = staging / self.manifest_name
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        while True:
            existing = self.versions()
            number = int(existing[-1][1:]) + 1 if existing else 1
            version = f"v{number:06d}"
            manifest["version"] = version
            write_json_durably(manifest_path, manifest)
            _fsync_dir(staging)
            try:
                os.rename(staging, self.root / version)
                break
            except OSError:
                if not (self.root / version).exists():
                    raise
                # Another build took that number first: take the next one.
        if make_current:
            self.point_current_at(version)
        return version

    def point_current_at(self, version: str) -> None:
        """Atomically switch CURRENT to an existing version (publish and rollback)."""
        if not (self.root / version / self.manifest_name).is_file():
            raise NotFound(f"{self.kind} {version!r}")
        tmp = self.root / f".{CURRENT}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / CURRENT)
        _fsync_dir(self.root)
        log.info("%s %s is now current", self.kind, version)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the current one."""
        current = self.current_version()
        versions = self.versions()
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
        for version in doomed:
            shutil.rmtree(self.root / version, ignore_errors=True)
        return doomed

    def _remove_stale_staging(self) -> None:
        cutoff = time.time() - STALE_STAGING_S
        for path in self.root.glob(".staging-*"):
            try:
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                pass


class IndexStore(VersionStore):
    """The index folder: versions of ANN index + row map + vectors + BM25."""

    kind = "index version"

    def load(self, version: str | None = None) -> IndexArtifact:
        """Load a version (default: CURRENT); raises NotReady when nothing is published."""
        if version is None:
            version = self.current_version()
            if version is None:
                raise NotReady(
                    "no index is published yet: run `recsearch build` after `recsearch ingest`"
                )
        folder = self.root / version
        manifest = self.manifest(version)
        rows = json.loads((folder / ITEMS).read_text(encoding="utf-8"))
        ann = load_index(folder, manifest["index"])
        return IndexArtifact(
            version=version,
            folder=folder,
            manifest=manifest,
            ann=ann,
            ids=rows["ids"],
            categories=rows["categories"],
            text_hashes=rows["text_hashes"],
            lexical=LexicalIndex.load(folder, len(rows["ids"])),
        )


class LiveVersion(Generic[T]):
    """The version a process uses, following CURRENT as other processes publish.

    Thread-safe: callers get one object; a newer version is loaded by whichever caller
    notices it first, at most every poll_s seconds, while the others keep the old one.
    """

    def __init__(
        self,
        store: VersionStore,
        poll_s: float,
        load: Callable[[str], T],
        missing: Callable[[], T],
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        self._load = load
        self._missing = missing
        self._version: str | None = None
        self._value: T | None = None
        self._checked_at = -float("inf")
        self._lock = threading.Lock()

    def get(self) -> T:
        value = self._value
        if value is not None and time.monotonic() - self._checked_at < self.poll_s:
            return value
        with self._lock:
            if self._value is not None and time.monotonic() - self._checked_at < self.poll_s:
                return self._value
            version = self.store.current_version()
            if version is None:
                return self._missing()
            if self._value is None or self._version != version:
                self._value = self._load(version)
                self._version = version
                log.info("now using %s %s", self.store.kind, version)
            self._checked_at = time.monotonic()
            return self._value


class LiveIndex(LiveVersion[IndexArtifact]):
    """The serving index version; NotReady before the first build."""

    def __init__(self, store: IndexStore, poll_s: float, model_name: str | None = None) -> None:
        def load(version: str) -> IndexArtifact:
            loaded = store.load(version)
            built_with = loaded.manifest["model"]["name"]
            if model_name is not None and built_with != model_name:
                raise NotReady(
                    f"index {version} was built with model {built_with!r} but this process "
                    f"encodes with {model_name!r}: run `recsearch build`"
                )
            return loaded

        def missing() -> IndexArtifact:
            raise NotReady(
                "no index is published yet: run `recsearch build` after `recsearch ingest`"
            )

        super().__init__(store, poll_s, load, missing)
        self.store: IndexStore = store

    def get_or_none(self) -> IndexArtifact | None:
        try:
            return self.get()
        except NotReady:
            return None


def write_artifact_files(
    folder: Path,
    *,
    manifest: dict[str, Any],
    ids: list[str],
    categories: list[str | None],
    text_hashes: list[str],
    vectors: np.ndarray,
) -> None:
    """Write the row map, the vectors and the manifest of a staged version."""
    write_json_durably(
        folder / ITEMS, {"ids": ids, "categories": categories, "text_hashes": text_hashes}
    )
    with open(folder / VECTORS, "wb") as fh:
        np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
        fh.flush()
        os.fsync(fh.fileno())
    write_json_durably(folder / MANIFEST, manifest)


def write_json_durably(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
