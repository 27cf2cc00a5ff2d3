"""The file-system chores every room shares: private folders, atomic and durable writes,
create-once files and locks between processes.

Atomic: a reader sees the old file or the new one, never half of either (a temporary file
beside the target, fsynced, then os.replace). Durable: the folder is fsynced too, so a crash
after the call keeps the new name. Locks are flock(2) locks: they belong to an open file, so
two holders in one process exclude each other too, and the kernel drops them when the
holder's process dies (a crashed build never leaves a lock behind).
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600  # lock files and private files: this user only


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(a temporary path beside path), then make that file `path`, durably.

    The temporary file is as readable as the folder; it is removed if anything fails.
    """
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(path.parent)


def write_text_durably(path: Path, text: str) -> None:
    """Replace path with text (UTF-8), atomically and durably."""

    def put(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    write_atomically(path, put)


def write_json_durably(path: Path, data: Any) -> None:
    """Replace path with data as JSON, atomically and durably."""

    def dump(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=1)

    write_atomically(path, dump)


def create_once(path: Path, text: str) -> bool:
    """Write text to path unless it exists; False when another writer created it first.

    The text is written and fsynced under a temporary name (mode 0600), then hard-linked into
    place: a link never replaces a file, so the first writer wins, and no reader can see the
    file half written (creating it and then writing let others read it empty).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        fsync_dir(path.parent)
        return True
    finally:
        remove_quietly(tmp)


def create_private_file(path: Path) -> bool:
    """Create an empty file readable by this user only (0600, whatever the umask); False when
    it exists already (left as it is)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # exactly, whatever the umask
    finally:
        os.close(fd)
    return True


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


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path (created 0600 if missing) for the block, waiting for
    any other holder, in this process or another."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def try_lock(path: Path) -> int | None:
    """Take an exclusive lock on path (created 0600 if missing) without waiting: the open
    file descriptor that holds it (close it to release), or None when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def held_elsewhere(path: Path) -> bool:
    """Whether another open file holds a lock on path (False if path does not exist)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def temp_file_beside(path: Path) -> tuple[int, str]:
    """A new, uniquely named file in path's folder, as readable as that folder.

    os.replace needs the same filesystem; mkstemp's 0600 would make a file the folder's
    other readers (a server running as another user) could not open.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, stat.S_IMODE(path.parent.stat().st_mode) & 0o666)
    return fd, tmp


def remove_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(path: Path) -> None:
    """Make the folder's entries (a new or renamed file) survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
