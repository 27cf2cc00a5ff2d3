"""engine.core.files: atomic writes leave the old file or the new one, create_once lets the
first writer win, locks exclude other holders (in this process too), folders are private."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from engine.core.files import (
    create_once,
    held_elsewhere,
    locked,
    make_private_dir,
    try_lock,
    write_atomically,
    write_json_durably,
)


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_durably(path, {"v": 1})

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, broken)
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    write_json_durably(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}


def test_the_new_file_is_as_readable_as_its_folder(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    write_json_durably(tmp_path / "a.json", [])
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640


def test_create_once_lets_the_first_writer_win(tmp_path: Path) -> None:
    path = tmp_path / "key"
    assert create_once(path, "first\n")
    assert not create_once(path, "second\n")
    assert path.read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_a_lock_excludes_another_holder_in_the_same_process(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    order: list[str] = []
    inside = threading.Event()

    def other() -> None:
        inside.wait(5)
        with locked(path):
            order.append("other")

    thread = threading.Thread(target=other)
    thread.start()
    with locked(path):
        inside.set()
        time.sleep(0.1)  # the other thread is blocked on the lock meanwhile
        order.append("first")
    thread.join(5)
    assert order == ["first", "other"]


def test_try_lock_and_held_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "leader"
    assert not held_elsewhere(path)  # no file: nobody holds it
    fd = try_lock(path)
    assert fd is not None
    assert try_lock(path) is None and held_elsewhere(path)
    os.close(fd)
    assert not held_elsewhere(path)
    again = try_lock(path)
    assert again is not None
    os.close(again)


def test_private_folders_are_made_0700_and_existing_ones_kept(tmp_path: Path) -> None:
    make_private_dir(tmp_path / "a" / "b")
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open").chmod(0o755)
    make_private_dir(tmp_path / "open")
    assert stat.S_IMODE((tmp_path / "open").stat().st_mode) == 0o755
