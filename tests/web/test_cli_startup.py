"""What a `recsearch` command loads before it answers (issue 28): `--help` the command tree
and click only, `search` what a search uses. Checked by the modules a fresh process holds at
the end, not by the clock (bench/cli_startup.py times them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.core.config import Settings
from engine.encoder.embedder import Embedder
from engine.runtime import Runtime
from tests.conftest import ROOT, SAMPLE_CATALOG

# Each command: the packages --help (of any command) must not load. (The engine's errors and
# settings bring pydantic; the runtime SQLAlchemy, numpy and FAISS; the API Flask.)
NOT_FOR_HELP = (
    "flask",
    "werkzeug",
    "torch",
    "transformers",
    "sentence_transformers",
    "onnxruntime",
    "faiss",
    "numpy",
    "sqlalchemy",
    "pydantic",
    "engine.runtime",
    "engine.core.config",
    "web.app",
)
# alembic: a migrated database is checked with one read (engine.store.db.ensure_schema).
NOT_FOR_SEARCH = ("flask", "werkzeug", "web.app", "sentence_transformers", "alembic")

# Runs every command's --help in one process, then prints which NOT_FOR_HELP it loaded.
HELP_EVERYWHERE = """
import json, sys
import click
from web.cli import cli, main

def paths(command, prefix):
    yield prefix
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from paths(sub, [*prefix, name])

shown = []
for path in [["--version"], *paths(cli, [])]:
    args = path if path == ["--version"] else [*path, "--help"]
    try:
        main(args)
    except SystemExit as exit:
        assert exit.code in (0, None), (args, exit.code)
    shown.append(" ".join(path))
print(json.dumps({"shown": shown, "loaded": [m for m in NAMES if m in sys.modules]}))
"""

# A search through main(), as the `recsearch` script calls it; then the modules it loaded.
SEARCH = """
import json, sys
from web.cli import main
try:
    main(["search", "skiing in the alps", "-k", "3"])
except SystemExit as exit:
    code = exit.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "loaded": sorted(m for m in sys.modules if "." not in m)}, out)
"""


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without RECSEARCH_* (a developer's shell may set some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSEARCH_")}
    return {**env, **variables}


def test_help_of_every_command_loads_the_command_tree_only(tmp_path: Path) -> None:
    code = f"NAMES = {NOT_FOR_HELP!r}\n{HELP_EVERYWHERE}"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(RECSEARCH_DATA_DIR=str(tmp_path / "var")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert {"--version", "", "search", "ingest", "build", "key create", "jobs"} <= set(
        found["shown"]
    )
    assert found["loaded"] == [], f"--help loaded {found['loaded']}"
    assert not (tmp_path / "var").exists()  # no settings read, no data dir made


def test_the_key_scopes_of_the_cli_are_the_engines() -> None:
    from engine.store.api_keys import SCOPES
    from web.cli.server import SCOPES as CLI_SCOPES

    assert CLI_SCOPES == SCOPES


def test_the_cli_tunes_the_encoder_for_as_many_epochs_as_the_indexer() -> None:
    from indexer.encoder_tuning import TuneOptions
    from indexer.schemas import TrainEncoderBody
    from web.cli.models import TUNE_EPOCHS

    assert TUNE_EPOCHS == TuneOptions.epochs == TrainEncoderBody().epochs


@pytest.fixture(scope="module")
def search_run(
    tmp_path_factory: pytest.TempPathFactory,
    embedder: Embedder,
    seed_index: Path,
    encoder_cache: Path,
) -> dict[str, object]:
    """`recsearch search` in a fresh process on a data dir with the sample catalog built (the
    seed's vectors; the session encoder's ONNX export and tokenizer, in this run's encoder
    cache): its output and its loaded packages."""
    if embedder.check is None:
        pytest.skip("the session encoder is not an ONNX one")
    tmp = tmp_path_factory.mktemp("cli_startup")
    settings = Settings(data_dir=tmp / "var", index_poll_s=0.0)
    rt = Runtime(settings, embedder=embedder)
    try:
        from indexer.build import build
        from indexer.ingest import ingest

        shutil.copytree(seed_index, settings.index_dir)
        with rt.write_session() as session:
            ingest(rt, session, SAMPLE_CATALOG)
        with rt.session() as session:
            build(rt, session)
    finally:
        rt.close()
    report = tmp / "loaded.json"
    done = subprocess.run(
        [sys.executable, "-c", SEARCH, str(report)],
        cwd=ROOT,
        # The data dir holds its SQLite database too; the cache, the session encoder's export.
        env=clean_env(
            RECSEARCH_DATA_DIR=str(settings.data_dir), RECSEARCH_CACHE_DIR=str(encoder_cache)
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(report.read_text())
    assert found["code"] in (0, None), done.stdout + done.stderr[-3000:]
    return {"output": done.stdout, "loaded": set(found["loaded"])}


@pytest.mark.db
def test_search_loads_no_flask_sentence_transformers_nor_alembic(search_run: dict) -> None:
    table = search_run["output"].splitlines()
    assert table[0].split() == ["#", "score", "category", "id", "title"]
    assert all(" mountain " in line for line in table[1:4]), search_run["output"]
    loaded = search_run["loaded"]
    assert "onnxruntime" in loaded and "faiss" in loaded  # it did search, with the ONNX encoder
    assert not loaded & set(NOT_FOR_SEARCH), sorted(loaded & set(NOT_FOR_SEARCH))


@pytest.mark.db
def test_search_with_the_onnx_encoder_loads_no_torch(search_run: dict) -> None:
    """The ONNX encoder's tokenizer comes from the file saved beside the export, and
    RECSEARCH_DEVICE=auto asks onnxruntime (and torch only where a CUDA driver is)."""
    assert "tokenizers" in search_run["loaded"]
    assert not search_run["loaded"] & {"torch", "transformers"}
