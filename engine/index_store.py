"""Versioned index artifacts on disk, and the CURRENT pointer that publishes one atomically.

Layout under settings.index_dir:
    CURRENT            the serving version's name, replaced with os.replace (atomic)
    v000007/           manifest.json, index.faiss (FAISS; a Milvus version's manifest names
                       its collection instead), items.json (row → id, category, text hash,
                       and what a search returns and ranks on: title, tags, attributes,
                       created_at), vectors.npy ((n, dim) float32 unit vectors: reused by the
                       next build), lexical/ (BM25)
    .staging-*/        a build in progress; a crash leaves one behind, never a half version
    .publish-lock      held (flock) while a version is numbered and made current

Folders we create are private (0700) unless the folder they are created in was opened up
by the operator: a version folder, and CURRENT, are as open as the store's folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from engine.ann import AnnIndex, RowLabels, load_index
from engine.errors import InvalidInput, NotFound, NotReady
from engine.lexical import LexicalIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
ITEMS = "items.json"
VECTORS = "vectors.npy"
PUBLISH_LOCK = ".publish-lock"
# v000001 ... v999999999999: ASCII digits only, and short, so a name is checked before it
# touches the filesystem (no paths, no "..", no over-long names). Match with fullmatch.
VERSION_RE = re.compile(r"v[0-9]{6,12}")
PRIVATE_DIR_MODE = 0o700
# A staging folder this old is left over from a crashed build, not one still running.
STALE_STAGING_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class ItemFields:
    """What a search returns and ranks on for one item, held by the index version (and by the
    delta for items written since), so serving never reads them from SQL."""

    title: str
    category: str | None
    tags: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)  # shared: copy before changing
    created_at: datetime | None = None

    @classmethod
    def from_columns(
        cls,
        title: str,
        category: str | None,
        tags: Any,
        attributes: Any,
        created_at: datetime | None,
    ) -> ItemFields:
        return cls(title, category, tuple(tags or ()), dict(attributes or {}), created_at)


@dataclass
class IndexArtifact:
    """A loaded index version: the ANN index plus its row → item map."""

    version: str
    folder: Path
    manifest: dict[str, Any]
    ann: AnnIndex  # labelled with ids and categories
    ids: list[str]
    categories: list[str | None]
    text_hashes: list[str]
    _vectors: np.ndarray | None = None
    lexical: LexicalIndex | None = None
    # Row-aligned with ids; None for a version built before items carried their fields.
    items: list[ItemFields] | None = None

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["dimension"])

    def rows_for_category(self, category: str) -> np.ndarray:
        """Sorted int64 rows of the category (empty for an unknown one)."""
        return self.ann.rows_for_category(category)

    def vectors(self) -> np.ndarray:
        """(n, dim) float32 unit vectors, memory-mapped read-only."""
        if self._vectors is None:
            self._vectors = np.load(self.folder / VECTORS, mmap_mode="r")
        return self._vectors

    def row_of(self, item_id: str) -> int | None:
        """The item's row in this version, or None if it was not in the catalog at build."""
        return self.ann.row_of(item_id)


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
        """The version CURRENT names, or None; NotReady if it names something else."""
        try:
            name = (self.root / CURRENT).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if name and not VERSION_RE.fullmatch(name):
            # Written by hand, or by a release that took any path: never follow it.
            raise NotReady(
                f"{self.root / CURRENT} names {name[:60]!r}, not a version like v000001: "
                "roll back or promote to one of the published versions"
            )
        return name or None

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and VERSION_RE.fullmatch(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def folder(self, version: str) -> Path:
        """The folder of a version; InvalidInput (422) for anything not named like v000001."""
        if not isinstance(version, str) or not VERSION_RE.fullmatch(version):
            shown = f"{str(version)[:40]}..." if len(str(version)) > 40 else version
            raise InvalidInput(f"{self.kind} {shown!r} is not a version name like v000001")
        return self.root / version

    def manifest(self, version: str) -> dict[str, Any]:
        """A version's manifest; InvalidInput for a bad name, NotFound for a missing version."""
        path = self.folder(version) / self.manifest_name
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise NotFound(f"{self.kind} {version!r}") from None

    def stage(self) -> Path:
        """A fresh folder for a build to write into (as open as the store's folder)."""
        make_private_dir(self.root)
        self._remove_stale_staging()
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        # mkdtemp makes it 0700; an operator who opened the store (a server running as
        # another user) gets versions as open as the store.
        staging.chmod(stat.S_IMODE(self.root.stat().st_mode))
        return staging

    def publish(self, staging: Path, *, make_current: bool = True) -> str:
        """Turn a staged folder into the next version and point CURRENT at it, atomically.

        The manifest in staging gets its "version" filled in. Publishers, in threads or
        processes, take turns under a lock, so each gets the next number and CURRENT only
        moves forward. If CURRENT cannot be switched the folder goes back to staging and the
        error propagates: no version is left behind that its caller reports as failed.
        """
        manifest_path = staging / self.manifest_name
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        with self._publish_lock():
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
                    # Taken by a publisher that does not lock (an older release): next one.
            if make_current:
                try:
                    self._write_current(version)
                except BaseException:
                    if self.current_version() != version:
                        os.rename(self.root / version, staging)
                    raise
        return version

    def point_current_at(self, version: str) -> None:
        """Atomically switch CURRENT to an existing version (rollback, promote).

        Raises InvalidInput (422) for a name not like v000001, NotFound (404) for a
        well-formed name with no published version.
        """
        if not (self.folder(version) / self.manifest_name).is_file():
            raise NotFound(f"{self.kind} {version!r}")
        with self._publish_lock():
            self._write_current(version)

    def _write_current(self, version: str) -> None:
        # A temporary file unique to this call: two threads of one process publishing at once
        # must not write, then rename, the same file.
        fd, tmp = _temp_file_beside(self.root / CURRENT)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(version + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / CURRENT)
        except BaseException:
            _remove_quietly(tmp)
            raise
        _fsync_dir(self.root)
        log.info("%s %s is now current", self.kind, version)

    @contextmanager
    def _publish_lock(self) -> Iterator[None]:
        """Serialize numbering and CURRENT across threads and processes (flock per open)."""
        import fcntl

        make_private_dir(self.root)
        fd = os.open(self.root / PUBLISH_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

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
        for path in [*self.root.glob(".staging-*"), *self.root.glob(f".{CURRENT}.*.tmp")]:
            try:
                if path.stat().st_mtime < cutoff:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink()
            except FileNotFoundError:
                pass


class IndexStore(VersionStore):
    """The index folder: versions of ANN index + row map + vectors + BM25.

    A version whose vectors live in Milvus names its collection in the manifest; making it
    current moves the Milvus alias too (under the same lock, alias first: if CURRENT cannot
    be written the alias moves back), and pruning it drops its collection.
    """

    kind = "index version"
    _replaced: str | None = None  # what CURRENT named before this store last moved it

    def _write_current(self, version: str) -> None:
        try:
            self._replaced = self.current_version()
        except NotReady:  # CURRENT names no version (a bad pointer being replaced now)
            self._replaced = None
        manifest = self.manifest(version)
        index = manifest.get("index") or {}
        if index.get("backend") != "milvus":
            super()._write_current(version)
            return
        from engine.ann.milvus_alias import make_serving

        undo = make_serving(index, manifest.get("catalog_read_at"))
        try:
            super()._write_current(version)
        except BaseException:
            undo()
            raise

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the current one, with the Milvus
        collections they name."""
        collections: dict[str, dict[str, Any]] = {}
        for version in self.versions():
            try:
                index = self.manifest(version)["index"]
            except (NotFound, KeyError, ValueError):
                continue
            if index.get("backend") == "milvus":
                collections[version] = index
        doomed = super().prune(keep)
        # The version this store's last publish or rollback replaced may still serve other
        # processes until they next poll CURRENT: a folder they memory-mapped outlives its
        # deletion, a dropped collection does not. Its collection is left for the sweep of
        # collections no version names (a day later, at a build).
        dropping = [v for v in doomed if v != self._replaced]
        by_place: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for version in dropping:
            if version in collections:
                index = collections[version]
                by_place.setdefault((index["uri"], index["alias"]), []).append(index)
        if by_place:
            from engine.ann.milvus_alias import drop_collections

            kept = [c["collection"] for v, c in collections.items() if v not in dropping]
            for gone in by_place.values():
                drop_collections(gone[0], [g["collection"] for g in gone], keep=kept)
        return doomed

    def load(self, version: str | None = None) -> IndexArtifact:
        """Load a version (default: CURRENT); raises NotReady when nothing is published."""
        if version is None:
            version = self.current_version()
            if version is None:
                raise NotReady(
                    "no index is published yet: run `recsearch build` after `recsearch ingest`"
                )
        folder = self.folder(version)
        manifest = self.manifest(version)
        rows = json.loads((folder / ITEMS).read_text(encoding="utf-8"))
        ann = load_index(folder, manifest["index"], RowLabels(rows["ids"], rows["categories"]))
        items = _item_fields(rows)
        if items is None:
            log.warning(
                "index %s holds no item fields (built by an older release): searches read "
                "them from SQL until the next `recsearch build`",
                version,
            )
        return IndexArtifact(
            version=version,
            folder=folder,
            manifest=manifest,
            ann=ann,
            ids=rows["ids"],
            categories=rows["categories"],
            text_hashes=rows["text_hashes"],
            lexical=LexicalIndex.load(folder, len(rows["ids"])),
            items=items,
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
    items: list[ItemFields],
) -> None:
    """Write the row map with the items' fields, the vectors and the manifest of a staged
    version; items is row-aligned with ids."""
    if len(items) != len(ids):
        raise ValueError(f"{len(items)} item fields for {len(ids)} ids")
    write_json_durably(
        folder / ITEMS,
        {
            "ids": ids,
            "categories": categories,
            "text_hashes": text_hashes,
            "titles": [i.title for i in items],
            "tags": [list(i.tags) for i in items],
            "attributes": [i.attributes for i in items],
            "created_at": [
                None if i.created_at is None else i.created_at.isoformat() for i in items
            ],
        },
    )
    with open(folder / VECTORS, "wb") as fh:
        np.save(fh, np.ascontiguousarray(vectors, dtype=np.float32))
        fh.flush()
        os.fsync(fh.fileno())
    write_json_durably(folder / MANIFEST, manifest)


def _item_fields(rows: dict[str, Any]) -> list[ItemFields] | None:
    """The fields items.json holds, row-aligned; None when it predates them."""
    if "titles" not in rows:
        return None
    return [
        ItemFields(
            title,
            category,
            tuple(tags),
            attributes,
            None if created is None else datetime.fromisoformat(created),
        )
        for title, category, tags, attributes, created in zip(
            rows["titles"],
            rows["categories"],
            rows["tags"],
            rows["attributes"],
            rows["created_at"],
            strict=True,
        )
    ]


def write_json_durably(path: Path, data: Any) -> None:
    """Replace path with data as JSON, atomically: readers see the old file or the new one."""
    fd, tmp = _temp_file_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def make_private_dir(path: Path) -> None:
    """Create a folder, and its missing parents, readable by this user only (0700).

    The mode is set after creation, so the umask does not matter. A folder that exists is
    left as it is: its owner may have opened it on purpose.
    """
    missing: list[Path] = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # created by a concurrent caller, who sets its mode
        folder.chmod(PRIVATE_DIR_MODE)


def _temp_file_beside(path: Path) -> tuple[int, str]:
    """A new, uniquely named file in path's folder, as readable as that folder.

    os.replace needs the same filesystem; mkstemp's 0600 would make a file the folder's
    other readers (a server running as another user) could not open.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, stat.S_IMODE(path.parent.stat().st_mode) & 0o666)
    return fd, tmp


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
