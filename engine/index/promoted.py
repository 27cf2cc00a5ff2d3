"""A version store whose CURRENT is moved by hand (promote, rollback), remembering the version
it replaced: ranking models (engine.ranking.model_store) and tuned encoders
(engine.index.encoder_store) publish this way."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

from engine.core.errors import Conflict, NotFound
from engine.core.files import write_text_durably
from engine.index.versions import VERSION_RE, VersionStore
from engine.store.published import Publication, PublishedVersions

log = logging.getLogger(__name__)

# The version that was live before the current one: a promote's rollback target, which
# prune keeps. Written by the process that moved CURRENT (shared: on that host only).
PREVIOUS = "PREVIOUS"


class PromotedStore(VersionStore):
    """Versions made live by promote(version); rollback_target() is the one before."""

    # What serves while no version is live, in words ("prior" for models).
    unset = "none"

    def __init__(self, root: Path, shared: PublishedVersions | None = None) -> None:
        super().__init__(root, shared)
        self._pinned_now: set[str] = set()

    def promote(self, version: str, *, expected: str | None = None) -> None:
        """Make version live (an older one too: a rollback).

        expected, given, is the live version the caller saw (a version, or `unset`): the move
        is then a compare-and-set under the publish lock, and Conflict (409) names the live
        one when it is another, or when version already is live. Without it a promote just
        sets (promoting the live version again changes nothing). NotFound for an unknown
        version.
        """

        def check(current: str | None) -> None:
            live = current or self.unset
            if expected is not None and live == version:
                raise Conflict(f"{self.kind} {version} is already live")
            if expected is not None and live != expected:
                raise Conflict(
                    f"the live {self.kind.removesuffix(' version')} is {live}, not {expected}: "
                    "reload and decide again"
                )
            if self.shared is None and not (self.root / version / self.manifest_name).is_file():
                raise NotFound(f"{self.kind} {version!r}")  # pruned while this waited

        self.point_current_at(version, check)

    def rollback_target(self) -> str | None:
        """The version that was live before the current one, as this host last saw a move."""
        try:
            name = (self.root / PREVIOUS).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name if VERSION_RE.fullmatch(name) else None

    def prune(self, keep: int, *, pinned: Collection[str] = ()) -> list[str]:
        """Delete all but the newest `keep` versions, never the live one, the rollback target
        or those pinned (a running experiment's); under the publish lock, so a promote here
        never points at a version being deleted."""
        with self._publish_lock():
            self._pinned_now = set(pinned)
            try:
                return super().prune(keep)
            finally:
                self._pinned_now = set()

    def pinned(self) -> set[str]:
        target = self.rollback_target()
        return self._pinned_now | ({target} if target else set())

    def _write_current(self, version: str) -> None:
        super()._write_current(version)
        self._note_previous(version)

    def _move_shared(self, publication: Publication, version: str) -> None:
        super()._move_shared(publication, version)
        self._note_previous(version)

    def _note_previous(self, version: str) -> None:
        if self._replaced is None or self._replaced == version:
            return
        try:
            write_text_durably(self.root / PREVIOUS, self._replaced + "\n")
        except OSError:  # the move itself succeeded: only prune's protection is weaker
            log.warning(
                "could not note %s as the previous %s", self._replaced, self.kind, exc_info=True
            )
