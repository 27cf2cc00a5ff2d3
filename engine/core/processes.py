"""This process as others see it, and what processes of this host that are gone left behind.

Files and folders a process makes for itself (a build's staging folder, a server's metrics
folder) carry its HOST:PID, so a leftover of a process that died, even by SIGKILL, is known
at once on the same host, without a lock or a timeout.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path

# This process: host and pid, as job rows and leftover names carry it.
PROCESS = f"{socket.gethostname()}:{os.getpid()}"


def current() -> str:
    """HOST:PID of the calling process (after a fork, the child's own)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def left_by_the_dead(name: str, prefix: str) -> bool:
    """Whether a file or folder named PREFIX + HOST:PID-... belongs to a process of this host
    that is gone (never this process, never another host's)."""
    host, _, rest = name.removeprefix(prefix).partition(":")
    pid = rest.split("-", 1)[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return not is_alive(int(pid))


def remove_leftovers(paths: Iterable[Path], prefix: str, older_than_s: float) -> list[Path]:
    """Remove those of paths that a dead process of this host left, or that are older than
    older_than_s (another host's, or an older naming); returns what was removed."""
    cutoff = time.time() - older_than_s
    removed = []
    for path in paths:
        try:
            if left_by_the_dead(path.name, prefix) or path.stat().st_mtime < cutoff:
                removed.append(path)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
        except FileNotFoundError:
            pass
    return removed
