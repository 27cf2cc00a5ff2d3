"""The version of a store a process uses, following its CURRENT (or, with
RECSEARCH_VERSION_SHARING=database, the database's pointer) as other processes publish."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from engine.index.versions import VersionStore

log = logging.getLogger(__name__)


T = TypeVar("T")


class LiveVersion(Generic[T]):
    """The version a process uses, following CURRENT as other processes publish.

    Thread-safe: callers get one object; a newer version is loaded by whichever caller
    notices it first, at most every poll_s seconds, while the others wait for it (shared: it
    is installed from the database first, and the others keep the old one without waiting).
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
        if value is None or self.store.shared is None:
            # Files: loading is quick, and a caller that starts after a publish returned gets
            # the new version (tests/web/test_admin.py holds it to that).
            self._lock.acquire()
        elif not self._lock.acquire(blocking=False):
            # Shared: another caller is reading the pointer or installing the next version
            # (a download, seconds): serve the one that serves now.
            return value
        try:
            if self._value is not None and time.monotonic() - self._checked_at < self.poll_s:
                return self._value
            try:
                version = self.store.current_version()
            except SQLAlchemyError:
                if self._value is None:
                    raise
                # The shared pointer could not be read: keep serving, try again next poll.
                log.warning(
                    "could not read the current %s; keeping %s",
                    self.store.kind,
                    self._version,
                    exc_info=True,
                )
                self._checked_at = time.monotonic()
                return self._value
            if version is None:
                return self._missing()
            if self._value is None or self._version != version:
                self._value = self._load(version)
                self._version = version
                log.info("now using %s %s", self.store.kind, version)
                self.store.served(version)
            self._checked_at = time.monotonic()
            return self._value
        finally:
            self._lock.release()
