"""Exports a server needs, made before it starts by a child process (engine.encoder.prepare):
the serving process never imports torch, and a second start finds nothing to make."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import engine.encoder.prepare as prepare
from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.encoder.embedder import Embedder
from engine.encoder.onnx_cache import FILES, cache_problem, export_dir, model_digest
from engine.encoder.onnx_encoder import model_folder

# What a worker does at its start, in a process of its own: prepare, then load the query
# encoder; prints what was exported and whether torch was ever imported.
SERVER_START = """
import json, sys
from engine.core.config import Settings
from engine.encoder.onnx_cache import load_onnx_encoder
from engine.encoder.prepare import prepare_exports
settings = Settings.model_validate_json(sys.stdin.read())
made = prepare_exports(settings)
load_onnx_encoder(settings, settings.query_backend)
print(json.dumps({"made": made, "torch": "torch" in sys.modules}))
"""


def test_only_onnx_backends_are_prepared() -> None:
    assert prepare.backends(Settings(encoder="torch")) == []
    assert prepare.backends(Settings(encoder="onnx", query_encoder="onnx-int8")) == [
        "onnx-int8",
        "onnx",
    ]
    assert prepare.missing_exports(Settings(encoder="torch")) == []


@pytest.mark.model
def test_a_missing_export_is_made_by_a_child_and_the_server_never_imports_torch(
    embedder: Embedder, encoder_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache holding the fp32 export only, and int8 queries: the int8 file is quantized and
    checked against torch by the child; the process that prepared it then loads it without
    torch. A second start exports nothing and starts no child."""
    cache = tmp_path / "cache"
    shutil.copytree(encoder_cache / "encoders", cache / "encoders")
    settings = Settings(data_dir=tmp_path / "var", cache_dir=cache, query_encoder="onnx-int8")
    digest = model_digest(settings, model_folder(settings))
    int8 = export_dir(settings, digest) / FILES["onnx-int8"]
    int8.unlink(missing_ok=True)  # another test may have made it in the session's cache
    assert prepare.missing_exports(settings) == ["onnx-int8"]

    done = subprocess.run(
        [sys.executable, "-c", SERVER_START],
        input=settings.model_dump_json(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == {"made": ["onnx-int8"], "torch": False}
    assert "quantizing the ONNX export to int8" in done.stderr  # the child's progress line
    assert cache_problem(int8, digest) is None

    def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError("a child was started with every export in the cache")

    monkeypatch.setattr(prepare.subprocess, "run", no_child)
    assert prepare.missing_exports(settings) == []
    assert prepare.prepare_exports(settings) == []


def test_a_failed_child_stops_the_start_naming_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(data_dir=tmp_path / "var", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(prepare, "missing_exports", lambda _settings: ["onnx"])
    monkeypatch.setattr(prepare.sys, "executable", str(tmp_path / "no-python"))
    (tmp_path / "no-python").write_text("#!/bin/sh\nexit 3\n")
    (tmp_path / "no-python").chmod(0o755)
    with pytest.raises(ConfigError, match=r"preparing the onnx encoder failed \(exit 3\)"):
        prepare.prepare_exports(settings)
