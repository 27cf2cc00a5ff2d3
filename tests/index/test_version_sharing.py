"""Versions shared through the database (RECSEARCH_VERSION_SHARING=database): stores on two
folders (two hosts) that share only a database publish, follow, roll back and prune as one,
on SQLite and PostgreSQL.

The hosts here are two folders in one process; tests/web/test_fleet.py runs them as servers.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from engine.core.config import Settings
from engine.core.errors import InvalidInput, NotFound
from engine.encoder.embedder import Embedder
from engine.index.artifact import IndexStore
from engine.index.live_version import LiveVersion
from engine.index.versions import CURRENT, INSTALLED, VersionStore
from engine.ranking.model_store import ModelStore, live_model
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.store import published
from engine.store.db import ensure_schema, make_engine
from engine.store.models import PublishedCurrent, PublishedFile, PublishedVersion
from engine.store.published import Publication, PublishedVersions
from tests.conftest import SAMPLE_CATALOG, all_at_once


@pytest.fixture
def database(db_url: str, tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(Settings(data_dir=tmp_path / "db", database_url=db_url))
    ensure_schema(engine)
    yield engine
    engine.dispose()


def _host(database: Engine, folder: Path, kind: str = "index") -> VersionStore:
    return VersionStore(folder, PublishedVersions(database, kind))


def _stage(store: VersionStore, payload: int, *, blob_bytes: int = 0) -> Path:
    """A staged version: its manifest, a nested file, an empty one and a seeded blob."""
    staging = store.stage()
    (staging / store.manifest_name).write_text(f'{{"version": null, "n": {payload}}}')
    (staging / "lexical").mkdir()
    (staging / "lexical" / "terms.txt").write_text(f"terms of {payload}\n")
    (staging / "empty").write_bytes(b"")
    blob = np.random.default_rng(payload).bytes(blob_bytes)
    (staging / "blob.bin").write_bytes(blob)
    return staging


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of a version folder (but the install marker), by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != INSTALLED
    }


def _live(store: VersionStore) -> LiveVersion[dict[str, bytes]]:
    """What a server does: follow the current version and load its files."""

    def missing() -> dict[str, bytes]:
        return {}

    return LiveVersion(store, 0.0, lambda v: _files(store.local_folder(v)), missing)


def _rows(database: Engine, table: type) -> int:
    with database.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def test_a_publish_on_one_host_is_installed_and_served_on_another(
    database: Engine, tmp_path: Path
) -> None:
    a, b = _host(database, tmp_path / "a"), _host(database, tmp_path / "b")
    live_b = _live(b)
    assert live_b.get() == {} and b.current_version() is None
    # Three chunks of the blob (4 MiB each) and three small files.
    version = a.publish(_stage(a, 1, blob_bytes=2 * published.CHUNK_BYTES + 5))
    assert version == "v000001" and b.current_version() == version
    assert b.versions() == [version] and b.manifest(version)["version"] == version
    served = live_b.get()
    assert served == _files(a.folder(version)) and len(served["blob.bin"]) > 8_000_000
    assert served["empty"] == b"" and served["lexical/terms.txt"] == b"terms of 1\n"
    # Installed under the version's own name, with CURRENT following, and no staging left.
    assert (b.folder(version) / INSTALLED).is_file()
    assert (b.root / CURRENT).read_text().strip() == version
    assert not list(b.root.glob(".staging-*"))
    assert _rows(database, PublishedFile) == 3 + 3


def test_a_rollback_on_one_host_moves_the_other(database: Engine, tmp_path: Path) -> None:
    a, b = _host(database, tmp_path / "a"), _host(database, tmp_path / "b")
    live_a, live_b = _live(a), _live(b)
    first = a.publish(_stage(a, 1))
    second = a.publish(_stage(a, 2))
    assert live_a.get()["lexical/terms.txt"] == b"terms of 2\n" == live_b.get()["lexical/terms.txt"]
    b.point_current_at(first)
    assert a.current_version() == first == b.current_version()
    assert live_a.get()["lexical/terms.txt"] == b"terms of 1\n"
    assert (a.root / CURRENT).read_text().strip() == first  # CURRENT follows the database
    # Promote back from the host that never installed the second version itself.
    b.point_current_at(second)
    assert live_a.get()["lexical/terms.txt"] == b"terms of 2\n"
    with pytest.raises(NotFound):
        b.point_current_at("v000009")
    with pytest.raises(InvalidInput):
        b.point_current_at("../v000001")
    assert a.current_version() == second


def test_version_numbers_are_unique_across_hosts(database: Engine, tmp_path: Path) -> None:
    a, b = _host(database, tmp_path / "a"), _host(database, tmp_path / "b")
    assert a.publish(_stage(a, 1)) == "v000001"
    # b's folder has never seen v000001: its next number still follows the database's.
    assert b.publish(_stage(b, 2)) == "v000002"
    stagings = [(s, _stage(s, 10 + 2 * n + i)) for n in range(3) for i, s in enumerate((a, b))]
    outcomes = all_at_once([partial(store.publish, staging) for store, staging in stagings])
    assert all(isinstance(o, str) for o in outcomes), outcomes
    assert sorted(outcomes) == [f"v{n:06d}" for n in range(3, 9)]
    everything = [f"v{n:06d}" for n in range(1, 9)]
    assert a.versions() == everything == b.versions()
    # Each version holds its own publisher's payload, wherever it is read.
    payloads = {b.manifest(v)["n"] for v in everything}
    assert payloads == {1, 2, 10, 11, 12, 13, 14, 15}
    for version in everything:
        assert _files(a.local_folder(version)) == _files(b.local_folder(version))


def test_a_failed_upload_leaves_the_previous_version_serving(
    database: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = _host(database, tmp_path / "a"), _host(database, tmp_path / "b")
    live_b = _live(b)
    first = a.publish(_stage(a, 1))
    assert live_b.get()["lexical/terms.txt"] == b"terms of 1\n"
    files_before = _rows(database, PublishedFile)

    # The connection fails after the second chunk of the next version went in.
    written: list[str] = []
    write_chunk = Publication._write_chunk

    def failing(self: Publication, version: str, path: str, chunk: int, data: bytes) -> None:
        if len(written) == 2:
            raise ConnectionError("the database went away")
        written.append(path)
        write_chunk(self, version, path, chunk, data)

    monkeypatch.setattr(Publication, "_write_chunk", failing)
    staging = _stage(a, 2, blob_bytes=published.CHUNK_BYTES + 1)
    with pytest.raises(ConnectionError):
        a.publish(staging)
    assert written  # it failed midway, not before the upload
    monkeypatch.undo()

    assert a.current_version() == first == b.current_version()
    assert live_b.get()["lexical/terms.txt"] == b"terms of 1\n"
    assert a.versions() == [first] == b.versions()
    assert _rows(database, PublishedFile) == files_before
    assert _rows(database, PublishedVersion) == 1
    assert staging.is_dir() and (staging / "blob.bin").is_file()  # the build can try again
    assert a.publish(staging) == "v000002"
    assert live_b.get()["blob.bin"] == (staging.parent / "v000002" / "blob.bin").read_bytes()


def test_prune_removes_the_database_copies(database: Engine, tmp_path: Path) -> None:
    a, b = _host(database, tmp_path / "a"), _host(database, tmp_path / "b")
    live_b = _live(b)
    versions = []
    for n in range(1, 5):
        versions.append(a.publish(_stage(a, n, blob_bytes=100)))
        live_b.get()  # b installs each one as it serves it
    assert [p.name for p in sorted(b.root.glob("v*"))] == versions
    b.point_current_at(versions[0])  # an old version serves: prune keeps it
    live_b.get()
    assert a.prune(keep=2) == versions[1:2]
    assert a.versions() == [versions[0], *versions[2:]] == b.versions()
    with database.connect() as conn:
        held = set(conn.scalars(select(PublishedFile.version)))
    assert held == {versions[0], *versions[2:]}
    assert not (a.folder(versions[1])).exists()
    # b drops its installed copy of the pruned version at its next install, and keeps the one
    # its CURRENT names; a version only on disk (not from the database) stays.
    b.point_current_at(versions[-1])
    a.prune(keep=1)
    assert a.versions() == [versions[-1]]
    local = b.root / "v000000"
    shutil.copytree(b.folder(versions[0]), local)
    (local / INSTALLED).unlink()
    newest = a.publish(_stage(a, 5))
    assert live_b.get()["lexical/terms.txt"] == b"terms of 5\n"
    assert sorted(p.name for p in b.root.glob("v*")) == ["v000000", versions[-1], newest]


def test_a_model_promoted_on_one_host_serves_on_another(database: Engine, tmp_path: Path) -> None:
    a = ModelStore(tmp_path / "a", PublishedVersions(database, "models"))
    live_b = live_model(tmp_path / "b", 0.0, PublishedVersions(database, "models"))
    assert live_b.get().version == "prior"
    prior = LinearRanker.prior()
    trained = dataclasses.replace(prior, weights=prior.weights * 2 + 0.5)
    candidate = a.save(trained, {"auc": 0.9}, promote=False)
    assert live_b.get().version == "prior"  # saved, not promoted
    b = ModelStore(tmp_path / "b", PublishedVersions(database, "models"))
    assert b.report(candidate) == {"auc": 0.9}
    a.point_current_at(candidate)
    np.testing.assert_array_equal(live_b.get().weights, trained.weights)
    # An index store on the same database numbers and points apart from the models.
    index = _host(database, tmp_path / "a-index")
    assert index.current_version() is None and index.versions() == []
    with database.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(PublishedCurrent)) == 1


def test_files_sharing_is_unchanged(database: Engine, tmp_path: Path) -> None:
    a, b = VersionStore(tmp_path / "a"), VersionStore(tmp_path / "b")
    assert a.shared is None
    version = a.publish(_stage(a, 1))
    assert a.current_version() == version and (a.root / CURRENT).read_text() == f"{version}\n"
    assert b.current_version() is None and b.versions() == []
    assert _rows(database, PublishedVersion) == _rows(database, PublishedFile) == 0


@pytest.mark.slow
def test_servers_on_two_data_dirs_follow_a_build(
    db_url: str, tmp_path: Path, embedder: Embedder, seed_index: Path
) -> None:
    """Runtimes with version_sharing=database (what `recsearch serve` and `recsearch build`
    hold): a build on one publishes through the stores the runtime registered for its data
    dir, and the other's searches move to it with the same results."""
    from indexer.build import build
    from indexer.ingest import ingest

    def runtime(name: str) -> Runtime:
        settings = Settings(
            data_dir=tmp_path / name,
            database_url=db_url,
            index_poll_s=0.0,
            version_sharing="database",
        )
        return Runtime(settings, embedder=embedder)

    a, b = runtime("a"), runtime("b")
    try:
        shutil.copytree(seed_index, a.settings.index_dir)  # its vectors are reused
        with a.write_session() as session:
            ingest(a, session, SAMPLE_CATALOG)
        with a.session() as session:
            report = build(a, session)
        assert report.version is not None and report.reused == report.item_count
        # The seed's local v000001 does not clash: the build took the next number.
        assert report.version == "v000002"
        assert IndexStore(b.settings.index_dir).current_version() == report.version
        served = b.live.get()
        assert served.version == report.version and (served.folder / INSTALLED).is_file()
        query = embedder.encode(["quiet beaches with coral reefs"])[0]
        assert served.ann.search_ids(query, 10) == a.live.get().ann.search_ids(query, 10)
        np.testing.assert_array_equal(served.vectors(), a.live.get().vectors())
    finally:
        a.close()
        b.close()
    assert IndexStore(a.settings.index_dir).shared is None  # closed: unregistered
