"""The per-user encoder cache (issue 28): one ONNX export per model and library versions, shared
by every data dir; where it is; what its key changes with; the tokenizer saved beside it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import engine.encoder.onnx_cache as onnx_cache
from engine.core.config import Settings
from engine.core.config import user_cache_dir as real_user_cache_dir  # before conftest's stand-in
from engine.core.files import locked
from engine.encoder.cache_eviction import USED, evict_unused
from engine.encoder.embedder import Embedder
from engine.encoder.fast_tokenizer import (
    TOKENIZER_FILE,
    FastTokenizer,
    cached_tokenizer,
    tokenizer_problem,
)
from engine.encoder.onnx_cache import (
    DIGESTS,
    FILES,
    cache_problem,
    cache_root,
    export_dir,
    file_state,
    folder_digest,
    library_key,
    library_versions,
    model_digest,
)
from engine.encoder.onnx_encoder import read_spec
from indexer.ray_embedding import _export_home

MODEL_FOLDER = Path(Settings().model_path())
TEXTS = ["skiing in the alps", "a quiet beach with snorkeling", "Crème brûlée near the Seine"]


def no_export(*args: object, **kwargs: object) -> None:
    raise AssertionError("exported or checked against torch again")


def test_the_cache_is_per_user_unless_told_otherwise(tmp_path: Path, encoder_cache: Path) -> None:
    home = Path.home() / ".cache" / "recsearch"
    assert real_user_cache_dir({}) == home
    assert real_user_cache_dir({"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/recsearch")
    assert real_user_cache_dir({"XDG_CACHE_HOME": "rel"}) == home  # XDG wants absolute paths
    # The default of every Settings, from the environment or not (here the suite's own cache
    # stands in for the user's: tests/conftest.py).
    assert Settings().cache_dir == Settings.from_env({}).cache_dir == encoder_cache
    chosen = Settings.from_env({"RECSEARCH_CACHE_DIR": str(tmp_path)})
    assert cache_root(chosen) == tmp_path / "encoders"
    own = Settings(data_dir=tmp_path / "var", cache_dir=None)  # the fallback: the data dir's
    assert cache_root(own) == tmp_path / "var" / "encoders"


def test_the_cache_key_changes_with_the_model_files_and_the_library_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "var", cache_dir=tmp_path / "cache")
    folder = tmp_path / "model"
    shutil.copytree(MODEL_FOLDER, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "model.safetensors").symlink_to(MODEL_FOLDER / "model.safetensors")
    same = export_dir(settings, folder_digest(folder))
    assert same == export_dir(settings, folder_digest(MODEL_FOLDER))  # the same bytes
    assert same.parent.parent == tmp_path / "cache" / "encoders"
    config = folder / "1_Pooling" / "config.json"
    config.write_text(config.read_text() + " ")  # one byte more in one file
    changed = export_dir(settings, folder_digest(folder))
    assert changed.parent != same.parent and changed.name == same.name

    versions = library_versions()
    assert set(versions) == {"torch", "transformers", "tokenizers", "onnx", "onnxruntime"}
    assert all(versions.values()), versions
    real = onnx_cache.metadata.version
    keys = {library_key()}
    for library in versions:  # each library's version, changed alone, moves the folder
        monkeypatch.setattr(
            onnx_cache.metadata,
            "version",
            lambda name, library=library: "0.0.1" if name == library else real(name),
        )
        moved = export_dir(settings, folder_digest(MODEL_FOLDER))
        assert moved.parent == same.parent and moved.name != same.name, library
        keys.add(moved.name)
    assert len(keys) == len(versions) + 1
    monkeypatch.setattr(onnx_cache.metadata, "version", real)
    assert export_dir(settings, folder_digest(MODEL_FOLDER)) == same


@pytest.mark.model
def test_a_second_data_dir_reuses_the_cached_export(
    embedder: Embedder, encoder_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two fresh data dirs on one cache: neither exports, checks against torch, or keeps a
    copy; both encode as the session encoder (which made the export) does."""
    monkeypatch.setattr(onnx_cache, "export_graph", no_export)
    monkeypatch.setattr(onnx_cache, "probe_check", no_export)
    expected = embedder.encode(TEXTS)
    for name in ("a", "b"):
        env = {
            "RECSEARCH_DATA_DIR": str(tmp_path / name),
            "RECSEARCH_CACHE_DIR": str(encoder_cache),
        }
        fresh = Embedder(Settings.from_env(env))
        assert fresh.check is not None and fresh.check.reused
        assert fresh.check.model_file.is_relative_to(encoder_cache / "encoders")
        assert np.array_equal(fresh.encode(TEXTS), expected)
        assert not (tmp_path / name / "encoders").exists()


@pytest.mark.model
def test_an_unwritable_cache_falls_back_to_the_data_dir(
    embedder: Embedder, encoder_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache folder that cannot be made (here a file is in its way): the data dir's own
    cache serves, with a warning saying where and why."""
    data_dir = tmp_path / "var"
    shutil.copytree(encoder_cache / "encoders", data_dir / "encoders")  # its export, made before
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    caplog.set_level(logging.WARNING, logger="engine.encoder.onnx_cache")
    fallback = Embedder(Settings(data_dir=data_dir, cache_dir=blocked))
    assert fallback.check is not None and fallback.check.reused  # no export: the copy serves
    assert fallback.check.model_file.is_relative_to(data_dir / "encoders")
    assert f"cannot export the encoder into {blocked / 'encoders'}" in caplog.text
    assert np.array_equal(fallback.encode(TEXTS), embedder.encode(TEXTS))
    # Ray's encoder actors (indexer.ray_embedding) are told where the driver's export is.
    for driver, settings in ((embedder, embedder._settings), (fallback, fallback._settings)):
        assert driver.check is not None
        home = _export_home(driver, settings)
        actor = settings.replace(cache_dir=home, data_dir=tmp_path / "actor")
        assert driver.check.model_file.parent == export_dir(
            actor, driver.check.model_file.parent.parent.name
        )


@pytest.mark.model
@pytest.mark.parametrize("damage", ["garbled", "edited core", "other versions", "missing"])
def test_a_damaged_saved_tokenizer_is_made_again(
    damage: str, embedder: Embedder, encoder_cache: Path, tmp_path: Path
) -> None:
    spec = read_spec(MODEL_FOLDER, "m")
    digest = folder_digest(MODEL_FOLDER)
    source = export_dir(Settings(data_dir=encoder_cache), digest) / TOKENIZER_FILE
    folder = tmp_path / "export"
    folder.mkdir()
    path = folder / TOKENIZER_FILE
    shutil.copy(source, path)
    assert tokenizer_problem(folder, digest, spec.max_seq_length) is None
    record = json.loads(path.read_text())
    if damage == "garbled":
        path.write_text(path.read_text()[:1000])
    elif damage == "edited core":
        record["core"] = record["core"].replace('"[PAD]"', '"[PAF]"', 1)
        path.write_text(json.dumps(record))
    elif damage == "other versions":
        record["versions"]["tokenizers"] = "0.0.1"
        path.write_text(json.dumps(record))
    else:
        path.unlink()
    assert tokenizer_problem(folder, digest, spec.max_seq_length) is not None
    assert tokenizer_problem(folder, "0" * 64, spec.max_seq_length) is not None  # other model
    made = cached_tokenizer(spec.transformer, spec.max_seq_length, folder, digest)
    assert isinstance(made, FastTokenizer)
    assert tokenizer_problem(folder, digest, spec.max_seq_length) is None  # saved again, whole
    assert json.loads(path.read_text()) == json.loads(source.read_text())
    texts = [*TEXTS, "x " * 600]
    got = made.backend_tokenizer.encode_batch(texts)
    want = embedder._query.tokenizer.backend_tokenizer.encode_batch(texts)
    assert [e.ids for e in got] == [e.ids for e in want]


@pytest.mark.model
def test_an_export_untouched_since_it_was_hashed_is_not_hashed_again(
    embedder: Embedder, encoder_cache: Path, tmp_path: Path
) -> None:
    """Its .json records the file's state (inode, size, mtime, ctime): while the file keeps
    it, its bytes are trusted; a copy, or a file written or merely touched, is hashed."""
    digest = folder_digest(MODEL_FOLDER)
    made = export_dir(Settings(data_dir=encoder_cache), digest) / FILES["onnx"]
    meta = json.loads(Path(f"{made}.json").read_text())
    assert meta["state"] == file_state(made.stat())  # untouched since the session exported it
    folder = tmp_path / "export"
    folder.mkdir()
    path = folder / FILES["onnx"]
    shutil.copy2(made, path)  # same bytes and mtime, another inode
    meta_path = Path(f"{path}.json")
    meta_path.write_text(json.dumps({**meta, "sha256": "0" * 64}))
    assert "sha256 differs" in str(cache_problem(path, digest))  # hashed: a copy
    meta_path.write_text(json.dumps({**meta, "sha256": "0" * 64, "state": file_state(path.stat())}))
    assert cache_problem(path, digest) is None  # its recorded state: trusted, not hashed
    path.touch()  # ctime and mtime move, not a byte
    assert "sha256 differs" in str(cache_problem(path, digest))


def test_a_model_folder_is_hashed_again_only_when_a_file_changes(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(MODEL_FOLDER, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "model.safetensors").symlink_to(MODEL_FOLDER / "model.safetensors")
    settings = Settings(data_dir=tmp_path / "var", cache_dir=tmp_path / "cache")
    memo = cache_root(settings) / DIGESTS
    first = model_digest(settings, folder)
    assert first == folder_digest(folder) and memo.is_file()
    # Remembered: a forged digest in the memo is believed while no file changes...
    record = json.loads(memo.read_text())
    record[str(folder.resolve())]["digest"] = "f" * 64
    memo.write_text(json.dumps(record))
    assert model_digest(settings, folder) == "f" * 64
    # ...and not once one does: a byte more, or a file touched.
    config = folder / "1_Pooling" / "config.json"
    config.write_text(config.read_text() + " ")
    changed = model_digest(settings, folder)
    assert changed == folder_digest(folder) != first
    record = json.loads(memo.read_text())
    record[str(folder.resolve())]["digest"] = "f" * 64
    memo.write_text(json.dumps(record))
    (folder / "modules.json").touch()
    assert model_digest(settings, folder) == changed


def test_a_start_marks_its_export_used(embedder: Embedder, encoder_cache: Path) -> None:
    again = Embedder(Settings(data_dir=encoder_cache))
    assert again.check is not None
    marker = again.check.model_file.parent / USED
    assert marker.exists() and time.time() - marker.stat().st_mtime < 600


def test_exports_unused_for_a_month_are_removed(tmp_path: Path) -> None:
    """Old library keys and old tuned models go; the export in use, a recent one and one whose
    lock another process holds stay; an emptied model folder goes too."""
    root = tmp_path / "encoders"
    now = time.time()
    month = 31 * 86400

    def export(digest: str, key: str, used_ago: float | None) -> Path:
        folder = root / digest / key
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"x" * 1000)
        if used_ago is not None:
            (folder / USED).touch()
            os.utime(folder / USED, (now - used_ago, now - used_ago))
        else:  # never marked: its files' age counts
            os.utime(folder / "model.onnx", (now - month, now - month))
        return folder

    keep = export("base", "new-libs", 0)
    old_libs = export("base", "old-libs", month)
    recent = export("tuned-1", "new-libs", 86400)
    unmarked = export("tuned-2", "new-libs", None)
    locked_one = export("tuned-3", "new-libs", month)
    with locked(locked_one / ".lock"):
        removed = evict_unused(root, keep, now=now)
    assert sorted(removed) == sorted([old_libs, unmarked])
    assert keep.exists() and recent.exists() and locked_one.exists()
    assert not old_libs.exists() and not unmarked.parent.exists()
    assert (root / "base").exists()
