"""The file-system chores every room shares: private folders, atomic and durable writes, locks.

Atomic: a reader sees the old file or the new one, never half of either (a temporary file
beside the target, fsynced, then os.replace). Durable: the folder is fsynced too, so a crash
after the call keeps the new name."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

PRIVATE_DIR_MODE = 0o700


def write_json_durably(path: Path, data: Any) -> None:
    """Replace path with data as JSON, atomically: readers see the old file or the new one."""
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
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


def temp_file_beside(path: Path) -> tuple[int, str]:
    """A new, uniquely named file in path's folder, as readable as that folder.

    os.replace needs the same filesystem; mkstemp's 0600 would make a file the folder's
    other readers (a server running as another user) could not open.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, stat.S_IMODE(path.parent.stat().st_mode) & 0o666)
    return fd, tmp


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
