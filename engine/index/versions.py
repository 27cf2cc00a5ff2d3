"""A folder of numbered versions and the CURRENT pointer that publishes one atomically.

Index builds and trained models both publish this way (engine.index.artifact,
engine.ranking.model_store):
    CURRENT            the serving version's name, replaced with os.replace (atomic)
    v000007/           one version: its manifest and whatever its kind writes
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
from pathlib import Path
from typing import Any, Generic, TypeVar

from engine.core.errors import InvalidInput, NotFound, NotReady
from engine.core.files import (
    fsync_dir,
    locked,
    make_private_dir,
    write_json_durably,
    write_text_durably,
)

log = logging.getLogger(__name__)


CURRENT = "CURRENT"


MANIFEST = "manifest.json"


PUBLISH_LOCK = ".publish-lock"


# v000001 ... v999999999999: ASCII digits only, and short, so a name is checked before it
# touches the filesystem (no paths, no "..", no over-long names). Match with fullmatch.
VERSION_RE = re.compile(r"v[0-9]{6,12}")


# A staging folder this old is left over from a crashed build, not one still running.
STALE_STAGING_S = 24 * 3600


T = TypeVar("T")


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
                fsync_dir(staging)
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
        write_text_durably(self.root / CURRENT, version + "\n")
        log.info("%s %s is now current", self.kind, version)

    @contextmanager
    def _publish_lock(self) -> Iterator[None]:
        """Serialize numbering and CURRENT across threads and processes."""
        make_private_dir(self.root)
        with locked(self.root / PUBLISH_LOCK):
            yield

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
