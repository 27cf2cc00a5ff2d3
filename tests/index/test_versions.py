"""Versioned folders and the CURRENT pointer: concurrent publishes each get the next number,
a failed switch leaves no version behind, and version names are checked before they touch
the filesystem (over HTTP too)."""

from __future__ import annotations

import json
import threading
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from engine.core.errors import InvalidInput, NotFound, NotReady
from engine.index.artifact import IndexStore
from engine.index.versions import CURRENT, VersionStore
from engine.ranking.model_store import ModelStore
from engine.runtime import Runtime
from tests.conftest import all_at_once


def _stage(store: VersionStore, payload: int) -> Path:
    staging = store.stage()
    (staging / store.manifest_name).write_text(json.dumps({"version": None, "n": payload}))
    return staging


def test_publishing_from_several_threads_at_once(tmp_path: Path) -> None:
    for round_ in range(30):
        store = VersionStore(tmp_path / f"round{round_}")
        stagings = [_stage(store, n) for n in range(4)]
        outcomes = all_at_once([partial(store.publish, s) for s in stagings])
        published = [o for o in outcomes if isinstance(o, str)]
        assert len(published) == len(outcomes), outcomes
        versions = [f"v{n:06d}" for n in range(1, len(stagings) + 1)]
        assert sorted(published) == versions == store.versions()
        # Publishes are serialized: the one that finished last is the newest, and current.
        assert store.current_version() == versions[-1]
        assert all(store.manifest(v)["version"] == v for v in versions)
        leftovers = {p.name for p in store.root.iterdir()} - {CURRENT, ".publish-lock"}
        assert leftovers == set(versions)


def test_a_publish_that_cannot_switch_current_leaves_no_version(tmp_path: Path) -> None:
    class Broken(VersionStore):
        def _write_current(self, version: str) -> None:
            raise OSError("disk full")

    store = Broken(tmp_path / "store")
    staging = _stage(store, 1)
    with pytest.raises(OSError, match="disk full"):
        store.publish(staging)
    assert store.versions() == [] and store.current_version() is None


def test_json_files_are_written_through_unique_temporary_files(tmp_path: Path) -> None:
    from engine.core.files import write_json_durably

    target = tmp_path / "report.json"
    barrier = threading.Barrier(4)

    def write(n: int) -> None:
        barrier.wait()
        for _ in range(20):
            write_json_durably(target, {"n": n})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert json.loads(target.read_text())["n"] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


BAD_VERSIONS = [
    "",
    "v1",
    "v000001/..",
    "../indexes/v000001",
    "v000001\n",
    "V000001",
    "v٠٠٠٠٠١",  # Arabic-Indic digits match \d, not a version name
    "v" + "0" * 299,  # over the file-name limit: InvalidInput, not OSError
    "x" * 300,
]


@pytest.mark.parametrize("store_class", [IndexStore, ModelStore])
def test_point_current_at_accepts_only_version_names(
    tmp_path: Path, store_class: type[VersionStore]
) -> None:
    store = store_class(tmp_path / "data" / "store")
    version = store.publish(_stage(store, 1))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / store.manifest_name).write_text("{}")
    for bad in [*BAD_VERSIONS, str(outside), str(store.root / version)]:
        with pytest.raises(InvalidInput, match="not a version name like v000001"):
            store.point_current_at(bad)
        with pytest.raises(InvalidInput):
            store.manifest(bad)
    with pytest.raises(NotFound, match="'v000002'"):
        store.point_current_at("v000002")
    assert store.current_version() == version
    store.point_current_at(version)
    assert store.current_version() == version


def test_a_long_bad_version_is_named_shortened(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        VersionStore(tmp_path).point_current_at("v" + "9" * 299)
    assert "'v999999" in str(caught.value) and len(str(caught.value)) < 200


def test_a_current_pointer_outside_the_store_is_not_followed(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "indexes")
    version = store.publish(_stage(store, 1))
    (store.root / CURRENT).write_text("../elsewhere\n")  # as an older release could write
    with pytest.raises(NotReady, match="'../elsewhere', not a version like v000001"):
        store.current_version()
    store.point_current_at(version)
    assert store.current_version() == version


def test_rollback_and_promote_refuse_paths_over_http(client: Any, runtime: Runtime) -> None:
    settings = runtime.settings
    index_store = IndexStore(settings.index_dir)
    model_store = ModelStore(settings.model_dir)
    index_version = index_store.publish(_stage(index_store, 1), make_current=False)
    model_version = model_store.publish(_stage(model_store, 1), make_current=False)
    outside = settings.data_dir.parent / "elsewhere"
    outside.mkdir()
    (outside / "manifest.json").write_text("{}")
    (outside / "model.json").write_text("{}")
    for route, store in (("rollback", index_store), ("promote", model_store)):
        for bad in [str(outside), "../indexes/v000001", "../models/v000001", "v" + "1" * 299]:
            response = client.post(f"/admin/api/{route}", json={"version": bad})
            assert response.status_code == 422, (route, bad, response.get_json())
            assert response.get_json()["error"] == "invalid_input"
            assert bad[:20] in response.get_json()["message"]
        response = client.post(f"/admin/api/{route}", json={"version": "v000042"})
        assert response.status_code == 404 and "'v000042'" in response.get_json()["message"]
        assert store.current_version() is None
    assert client.post("/admin/api/rollback", json={"version": index_version}).status_code == 200
    assert client.post("/admin/api/promote", json={"version": model_version}).status_code == 200
    assert index_store.current_version() == index_version
    assert model_store.current_version() == model_version


def test_leftovers_of_dead_builds_are_removed_at_once_and_live_ones_kept(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess

    from engine.core.config import Settings
    from engine.runtime import Runtime

    store = VersionStore(tmp_path / "indexes")
    store.root.mkdir()
    host = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = store.root / f".staging-{host}:{gone.pid}-abc"  # a build killed, or out of space
    alive = store.root / f".staging-{host}:{os.getppid()}-def"  # another process still building
    mine = store.stage()  # this process's own build in progress
    elsewhere = store.root / ".staging-other-host:1-ghi"  # another host's: a day's grace
    for folder in (dead, alive, elsewhere):
        folder.mkdir()
        (folder / "index.faiss").write_bytes(b"partial")
    assert store.remove_leftovers() == [dead]
    assert not dead.exists() and alive.exists() and mine.exists() and elsewhere.exists()
    dead.mkdir()
    Runtime(Settings(data_dir=tmp_path, index_poll_s=0)).close()  # a process starting
    assert not dead.exists() and alive.exists()
