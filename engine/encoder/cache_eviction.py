"""The per-user encoder cache (engine.encoder.onnx_cache) does not grow without end.

Each export is some 90 MB (180 MB with its int8 twin), and new ones keep coming: a library
upgrade changes the library key, every tuned encoder version is a model of its own. So each
start that loads an export marks it used (the mtime of `.used` in its folder), and whenever a
new export is made, exports in the same cache unused for MAX_UNUSED_S are removed. An export
being made or loaded holds its folder's `.lock` (or has just marked itself): it is never
removed; one removed and wanted again later is simply exported again.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from engine.core.files import held_elsewhere

log = logging.getLogger(__name__)

USED = ".used"
MAX_UNUSED_S = 30 * 24 * 3600.0  # 30 days


def mark_used(export: Path) -> None:
    """Record that an export folder served a start now (nothing, on a read-only cache)."""
    try:
        (export / USED).touch()  # sets the mtime to now, existing or not
    except OSError:
        pass


def last_used(export: Path) -> float:
    """When an export was last marked used; before `.used` existed, its newest file's mtime."""
    try:
        return (export / USED).stat().st_mtime
    except OSError:
        pass
    times = [p.stat().st_mtime for p in export.iterdir() if p.is_file()]
    return max(times, default=export.stat().st_mtime)


def evict_unused(
    root: Path, keep: Path, *, max_unused_s: float = MAX_UNUSED_S, now: float | None = None
) -> list[Path]:
    """Remove the exports under root (<root>/<model digest>/<library key>/) other than keep
    that nobody used for max_unused_s; returns the folders removed. Never raises: a cache that
    cannot be cleaned still serves."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        exports = [e for d in root.iterdir() if d.is_dir() for e in d.iterdir() if e.is_dir()]
    except OSError:
        return removed
    for export in exports:
        try:
            if export.resolve() == keep.resolve() or held_elsewhere(export / ".lock"):
                continue
            if now - last_used(export) < max_unused_s:
                continue
            size = sum(p.stat().st_size for p in export.iterdir() if p.is_file())
            shutil.rmtree(export)
            removed.append(export)
            log.warning(
                "removed the encoder export %s (%d MB), unused for %d days",
                export,
                size // 2**20,
                max_unused_s // 86400,
            )
            if not any(export.parent.iterdir()):
                export.parent.rmdir()
        except OSError as exc:
            log.warning("could not remove the unused encoder export %s: %s", export, exc)
    return removed
