"""Versions (index builds, trained models) copied into the database, and which one serves.

With RECSEARCH_VERSION_SHARING=database, servers on hosts of their own share no folder: a
publish copies the version's files into published_files, in chunks of CHUNK_BYTES, and
moves published_current, all in one transaction; every process installs the version that
published_current names into its own data dir (engine.index.versions) and serves it.

Each version's files travel through the database once per host: fine for a catalog's index
of up to a few hundred MB; larger ones should share a data dir (docs/SCALING.md).
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update

from engine.core.clock import utcnow
from engine.store.db import WRITE_INTENT
from engine.store.models import PublishedCurrent, PublishedFile, PublishedVersion

log = logging.getLogger(__name__)

# Rows of at most 4 MiB: PostgreSQL's bytea holds up to 1 GB, but a row is built in memory
# whole on both ends, and a driver's buffer per fetched row stays small at this size.
CHUNK_BYTES = 4 * 1024 * 1024


# The database copy of each store folder, as engine.runtime registers them (share): a store
# built for a folder with no `shared` of its own (a build, a promote) finds it here.
_SHARED: dict[Path, PublishedVersions] = {}
_SHARED_LOCK = threading.Lock()


def share(root: Path, shared: PublishedVersions | None) -> None:
    """Make stores of the folder root publish to, and follow, shared (None: files only)."""
    with _SHARED_LOCK:
        if shared is None:
            _SHARED.pop(root.resolve(), None)
        else:
            _SHARED[root.resolve()] = shared


def unshare(root: Path, shared: PublishedVersions) -> None:
    """Undo share(root, shared), unless another has replaced it since."""
    with _SHARED_LOCK:
        if _SHARED.get(root.resolve()) is shared:
            del _SHARED[root.resolve()]


def shared_for(root: Path) -> PublishedVersions | None:
    """The database copy registered for the folder root, if any."""
    with _SHARED_LOCK:
        return _SHARED.get(root.resolve())


class PublishedVersions:
    """The versions of one store ("index" or "models") that the database holds.

    Reads are single statements on a pooled connection; publishing and moving the pointer
    happen in a Publication, which holds the store's lock until it commits.
    """

    def __init__(self, engine: Engine, store: str) -> None:
        self.engine = engine
        self.store = store

    def current(self) -> str | None:
        """The version that serves, or None before the first publish to the database."""
        query = select(PublishedCurrent.version).where(PublishedCurrent.store == self.store)
        with self.engine.connect() as conn:
            return conn.scalar(query)

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        query = select(PublishedVersion.version).where(PublishedVersion.store == self.store)
        with self.engine.connect() as conn:
            found = list(conn.scalars(query))
        return sorted(found, key=lambda v: int(v[1:]))

    def manifest(self, version: str) -> dict[str, Any] | None:
        """A version's manifest, or None when the database does not hold the version."""
        query = select(PublishedVersion.manifest).where(
            PublishedVersion.store == self.store, PublishedVersion.version == version
        )
        with self.engine.connect() as conn:
            found = conn.scalar(query)
        return None if found is None else dict(found)

    def download(self, version: str, folder: Path) -> int:
        """Write a version's files under folder (fsynced); return the bytes written.

        Raises LookupError when the database does not hold the version, or holds fewer
        files or bytes than it recorded (deleted while this read it: a prune elsewhere).
        """
        head = select(PublishedVersion.file_count, PublishedVersion.byte_size).where(
            PublishedVersion.store == self.store, PublishedVersion.version == version
        )
        chunks = (
            select(PublishedFile.path, PublishedFile.chunk, PublishedFile.data)
            .where(PublishedFile.store == self.store, PublishedFile.version == version)
            .order_by(PublishedFile.path, PublishedFile.chunk)
        )
        written, files = 0, 0
        with self.engine.connect() as conn:
            expected = conn.execute(head).first()
            if expected is None:
                raise LookupError(f"{self.store} version {version!r} is not in the database")
            # Streamed a few rows at a time: a version may be hundreds of MB.
            rows = conn.execution_options(stream_results=True, yield_per=4).execute(chunks)
            out: BinaryIO | None = None
            current_path = None
            try:
                for path, _chunk, data in rows:
                    if out is None or path != current_path:
                        if out is not None:
                            _close_durably(out)
                        target = _inside(folder, path)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        out = open(target, "wb")  # closed when the next file starts, or below
                        current_path = path
                        files += 1
                    out.write(data)
                    written += len(data)
            finally:
                if out is not None:
                    _close_durably(out)
        if (files, written) != (expected.file_count, expected.byte_size):
            raise LookupError(
                f"{self.store} version {version!r}: read {files} files and {written} bytes "
                f"of {expected.file_count} and {expected.byte_size} (pruned meanwhile?)"
            )
        return written

    def delete(self, versions: list[str]) -> None:
        """Remove versions and their files (never the current one: the caller keeps it)."""
        if not versions:
            return
        with self.engine.begin() as conn:
            for table in (PublishedFile, PublishedVersion):
                conn.execute(
                    delete(table).where(table.store == self.store, table.version.in_(versions))
                )

    @contextmanager
    def publication(self) -> Iterator[Publication]:
        """A transaction that holds this store's publish lock across every process sharing
        the database (PostgreSQL: a transaction advisory lock; SQLite: the write lock, taken
        at BEGIN). Rolled back unless the caller commits it."""
        with self.engine.connect().execution_options(**WRITE_INTENT) as conn:
            transaction = conn.begin()
            try:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._key()})
                yield Publication(conn, self.store, transaction)
            finally:
                if transaction.is_active:
                    transaction.rollback()

    def _key(self) -> int:
        # A stable 63-bit key per store, in the shape of engine.store.election's.
        return (zlib.crc32(f"recsearch:publish-{self.store}".encode()) << 16) | 0x52_53


class Publication:
    """What a publisher does under the store's lock; nothing is visible until commit()."""

    def __init__(self, conn: Connection, store: str, transaction: Any) -> None:
        self._conn = conn
        self._store = store
        self._transaction = transaction

    def last_number(self) -> int:
        """The highest version number the database holds (0 when none)."""
        query = select(PublishedVersion.version).where(PublishedVersion.store == self._store)
        numbers = [int(v[1:]) for v in self._conn.scalars(query)]
        return max(numbers, default=0)

    def has(self, version: str) -> bool:
        query = select(func.count()).where(
            PublishedVersion.store == self._store, PublishedVersion.version == version
        )
        return bool(self._conn.scalar(query))

    def add(self, version: str, manifest: dict[str, Any], folder: Path) -> int:
        """Copy every file under folder into the database as version; return its bytes."""
        files, size = 0, 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            files += 1
            with open(path, "rb") as fh:
                chunk = 0
                while True:
                    data = fh.read(CHUNK_BYTES)
                    if data or chunk == 0:  # an empty file is one empty chunk
                        self._write_chunk(version, relative, chunk, data)
                        size += len(data)
                    if len(data) < CHUNK_BYTES:
                        break
                    chunk += 1
        self._conn.execute(
            insert(PublishedVersion).values(
                store=self._store,
                version=version,
                manifest=manifest,
                file_count=files,
                byte_size=size,
                created_at=utcnow(),
            )
        )
        log.info(
            "copied %s version %s into the database: %d files, %d bytes",
            self._store,
            version,
            files,
            size,
        )
        return size

    def _write_chunk(self, version: str, path: str, chunk: int, data: bytes) -> None:
        self._conn.execute(
            insert(PublishedFile).values(
                store=self._store, version=version, path=path, chunk=chunk, data=data
            )
        )

    def set_current(self, version: str) -> None:
        now = utcnow()
        moved = self._conn.execute(
            update(PublishedCurrent)
            .where(PublishedCurrent.store == self._store)
            .values(version=version, updated_at=now)
        )
        if not moved.rowcount:
            self._conn.execute(
                insert(PublishedCurrent).values(store=self._store, version=version, updated_at=now)
            )

    def commit(self) -> None:
        self._transaction.commit()


def _inside(folder: Path, relative: str) -> Path:
    """folder / relative, refusing a path that leaves folder (the database is trusted less
    than the filesystem it writes to)."""
    target = (folder / relative).resolve()
    if not target.is_relative_to(folder.resolve()) or target == folder.resolve():
        raise ValueError(f"published file path {relative!r} leaves its version folder")
    return target


def _close_durably(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
