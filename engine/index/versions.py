"""A folder of numbered versions and the CURRENT pointer that publishes one atomically.

Index builds and trained models both publish this way (engine.index.artifact,
engine.ranking.model_store):
    CURRENT            the serving version's name, replaced with os.replace (atomic)
    v000007/           one version: its manifest and whatever its kind writes
    .staging-*/        a build in progress; a crash leaves one behind, never a half version
    .publish-lock      held (flock) while a version is numbered and made current

Folders we create are private (0700) unless the folder they are created in was opened up
by the operator: a version folder, and CURRENT, are as open as the store's folder.

With RECSEARCH_VERSION_SHARING=database a store also has a `shared` copy in the database
(engine.store.published), for servers on hosts of their own: a publish numbers its version
under the database's lock, copies its files there and moves the database's pointer in one
transaction; CURRENT then follows. The database's pointer is what serves: a process that
finds a version there that its folder lacks installs it (download to .staging-*, rename to
the version's name, .from-database marks it) and serves it, keeping the old one meanwhile.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.core import processes
from engine.core.errors import InvalidInput, NotFound, NotReady
from engine.core.files import (
    fsync_dir,
    locked,
    make_private_dir,
    write_json_durably,
    write_text_durably,
)
from engine.core.processes import remove_leftovers
from engine.store.published import Publication, PublishedVersions, shared_for

log = logging.getLogger(__name__)

CURRENT = "CURRENT"
MANIFEST = "manifest.json"
PUBLISH_LOCK = ".publish-lock"

# v000001 ... v999999999999: ASCII digits only, and short, so a name is checked before it
# touches the filesystem (no paths, no "..", no over-long names). Match with fullmatch.
VERSION_RE = re.compile(r"v[0-9]{6,12}")

# A staging folder this old is left over from a crashed build, not one still running.
STALE_STAGING_S = 24 * 3600

# In a version folder installed from the database: such a folder is removed here once the
# database no longer holds the version (pruned by the host that published it).
INSTALLED = ".from-database"


class VersionStore:
    """A folder of numbered versions (v000001, ...) and a CURRENT pointer to one of them.

    Index builds and trained models both publish this way: write a staging folder, rename it
    to the next number, then replace CURRENT atomically. With `shared` (or one registered for
    the folder by share()), the database holds every version too and says which is current.
    """

    manifest_name = MANIFEST
    kind = "version"

    def __init__(self, root: Path, shared: PublishedVersions | None = None) -> None:
        self.root = root
        self.shared = shared if shared is not None else shared_for(root)
        # What CURRENT named before this store last moved it (engine.index.artifact's prune).
        self._replaced: str | None = None
        self._installed: set[str] = set()  # versions checked to match the database's copy

    def current_version(self) -> str | None:
        """The version that serves, or None; NotReady if CURRENT names something else.

        Shared: the database's pointer (one small read), or CURRENT until the database has one.
        """
        if self.shared is not None:
            version = self.shared.current()
            if version is not None:
                return version
        return self._local_current()

    def _local_current(self) -> str | None:
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
        """Published versions, oldest first (shared: those in the database, and those here
        that were not installed from it: a copy of a version the database dropped is not)."""
        local = self._local_versions()
        if self.shared is None:
            return local
        found = set(self.shared.versions())
        found.update(v for v in local if not (self.root / v / INSTALLED).exists())
        return sorted(found, key=lambda v: int(v[1:]))

    def _local_versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir() and VERSION_RE.fullmatch(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def folder(self, version: str) -> Path:
        """The folder of a version; InvalidInput (422) for anything not named like v000001.

        Shared, the folder may not exist yet: local_folder installs it.
        """
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
            found = self.shared.manifest(version) if self.shared is not None else None
            if found is None:
                raise NotFound(f"{self.kind} {version!r}") from None
            return found

    def local_folder(self, version: str) -> Path:
        """The version's folder here, installed from the database first when the database
        holds a version of that name that this folder lacks (or holds differently).

        Raises InvalidInput for a bad name; a failed download raises and installs nothing.
        """
        folder = self.folder(version)
        if self.shared is None or version in self._installed:
            return folder
        published = self.shared.manifest(version)
        if published is not None and self._local_manifest(version) != published:
            self._install(self.shared, version, folder)
        self._installed.add(version)
        return folder

    def _local_manifest(self, version: str) -> dict[str, Any] | None:
        try:
            path = self.folder(version) / self.manifest_name
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (FileNotFoundError, ValueError):
            return None

    def _install(self, shared: PublishedVersions, version: str, folder: Path) -> None:
        """Download a version into staging and rename it into place, atomically."""
        started = time.monotonic()
        staging = self.stage()
        try:
            size = shared.download(version, staging)
            (staging / INSTALLED).touch()
            fsync_dir(staging)
            if folder.exists():  # a version of this name that is not the database's: replace it
                aside = Path(tempfile.mkdtemp(prefix=f".replaced-{version}-", dir=self.root))
                os.rename(folder, aside / version)
                log.warning("%s %s here differed from the database's: replaced", self.kind, version)
                shutil.rmtree(aside, ignore_errors=True)
            try:
                os.rename(staging, folder)
            except OSError:
                # Another process here installed it first (the same bytes): keep that one.
                if self._local_manifest(version) != shared.manifest(version):
                    raise
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self.root)
        log.info(
            "installed %s %s from the database: %d bytes in %.1f s",
            self.kind,
            version,
            size,
            time.monotonic() - started,
        )
        self._forget_pruned(shared)

    def _forget_pruned(self, shared: PublishedVersions) -> None:
        """Remove installed versions the database no longer holds and older than all it does
        (pruned by their publisher), but never the one CURRENT names (it may still serve)."""
        kept = shared.versions()
        if not kept:
            return
        oldest = int(kept[0][1:])
        try:
            serving = self._local_current()
        except NotReady:
            serving = None
        for version in self._local_versions():
            folder = self.root / version
            if int(version[1:]) < oldest and version != serving and (folder / INSTALLED).exists():
                shutil.rmtree(folder, ignore_errors=True)
                self._installed.discard(version)

    def served(self, version: str) -> None:
        """Note that a process here now serves version (shared: CURRENT follows the database,
        so tools that read the folder, and a restart before the database answers, agree)."""
        if self.shared is None:
            return
        try:
            if self._local_current() != version:
                write_text_durably(self.root / CURRENT, version + "\n")
        except (OSError, NotReady):
            log.warning("could not point %s at %s", self.root / CURRENT, version, exc_info=True)

    def stage(self) -> Path:
        """A fresh folder for a build to write into (as open as the store's folder)."""
        make_private_dir(self.root)
        self.remove_leftovers()
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{processes.current()}-", dir=self.root))
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

        Shared: the lock is the database's too, the number follows every version there and
        here, and the files are copied into the database in the transaction that moves its
        pointer; a failure anywhere before that commit leaves the database as it was.
        """
        if self.shared is not None:
            return self._publish_shared(self.shared, staging, make_current)
        manifest_path = staging / self.manifest_name
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        with self._publish_lock():
            version = self._rename_to_next(staging, manifest, 0)
            if make_current:
                try:
                    self._write_current(version)
                except BaseException:
                    if self._local_current() != version:
                        os.rename(self.root / version, staging)
                    raise
        return version

    def _rename_to_next(self, staging: Path, manifest: dict[str, Any], at_least: int) -> str:
        """Rename staging to the next free version name above at_least; return the name."""
        manifest_path = staging / self.manifest_name
        while True:
            existing = self._local_versions()
            number = max(int(existing[-1][1:]) if existing else 0, at_least) + 1
            version = f"v{number:06d}"
            manifest["version"] = version
            write_json_durably(manifest_path, manifest)
            fsync_dir(staging)
            try:
                os.rename(staging, self.root / version)
                return version
            except OSError:
                if not (self.root / version).exists():
                    raise
                # Taken by a publisher that does not lock (an older release): next one.

    def _publish_shared(self, shared: PublishedVersions, staging: Path, make_current: bool) -> str:
        manifest = json.loads((staging / self.manifest_name).read_text(encoding="utf-8"))
        with self._publish_lock(), shared.publication() as publication:
            version = self._rename_to_next(staging, manifest, publication.last_number())
            folder = self.root / version
            try:
                publication.add(version, manifest, folder)
                if make_current:
                    self._move_shared(publication, version)
                else:
                    publication.commit()
            except BaseException:
                os.rename(folder, staging)
                raise
            self._installed.add(version)
        if make_current:
            self.served(version)
        return version

    def _move_shared(self, publication: Publication, version: str) -> None:
        """Move the database's pointer, and what else serves the version (a Milvus alias),
        at one commit; the alias moves back if the commit fails."""
        self._remember_replaced()
        publication.set_current(version)
        undo = self._make_serving(version)
        try:
            publication.commit()
        except BaseException:
            undo()
            raise
        log.info("%s %s is now current (in the database)", self.kind, version)

    def point_current_at(
        self, version: str, check: Callable[[str | None], None] | None = None
    ) -> None:
        """Atomically switch CURRENT to an existing version (rollback, promote).

        Raises InvalidInput (422) for a name not like v000001, NotFound (404) for a
        well-formed name with no published version (shared: none in the database).
        check, given, sees the current version under the lock and may raise: a compare-and-set.
        """
        if self.shared is not None:
            self.folder(version)  # InvalidInput for a bad name
            with self._publish_lock(), self.shared.publication() as publication:
                if not publication.has(version):
                    raise NotFound(f"{self.kind} {version!r}")
                if check is not None:
                    check(self.current_version())
                self._move_shared(publication, version)
            self.local_folder(version)
            self.served(version)
            return
        if not (self.folder(version) / self.manifest_name).is_file():
            raise NotFound(f"{self.kind} {version!r}")
        with self._publish_lock():
            if check is not None:
                check(self.current_version())
            self._write_current(version)

    def _write_current(self, version: str) -> None:
        """Point CURRENT, and what else serves the version (_make_serving), at version."""
        self._remember_replaced()
        undo = self._make_serving(version)
        try:
            write_text_durably(self.root / CURRENT, version + "\n")
        except BaseException:
            undo()
            raise
        log.info("%s %s is now current", self.kind, version)

    def _remember_replaced(self) -> None:
        try:
            self._replaced = self.current_version()
        except NotReady:  # CURRENT names no version (a bad pointer being replaced now)
            self._replaced = None

    def _make_serving(self, version: str) -> Callable[[], None]:
        """Make what lives outside the folder serve version; return the undo. Nothing here."""
        return lambda: None

    @contextmanager
    def _publish_lock(self) -> Iterator[None]:
        """Serialize numbering and CURRENT across threads and processes."""
        make_private_dir(self.root)
        with locked(self.root / PUBLISH_LOCK):
            yield

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the current one nor pinned() (shared:
        from the database too; other hosts drop their installed copies at their next install)."""
        kept = {self.current_version(), *self.pinned()}
        versions = self.versions()
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in kept]
        if self.shared is not None:
            self.shared.delete(doomed)
        for version in doomed:
            shutil.rmtree(self.root / version, ignore_errors=True)
            self._installed.discard(version)
        return doomed

    def pinned(self) -> set[str]:
        """Versions prune keeps however old, besides the current one (a kind's own; none here)."""
        return set()

    def remove_leftovers(self) -> list[Path]:
        """Remove what crashed builds left (a process starting, and each build, call this):
        staging folders of this host's processes that are gone, at once; any other staging
        folder or temp pointer a day old. Returns what was removed."""
        if not self.root.is_dir():
            return []
        found = [*self.root.glob(".staging-*"), *self.root.glob(f".{CURRENT}.*.tmp")]
        return remove_leftovers(found, ".staging-", STALE_STAGING_S)
