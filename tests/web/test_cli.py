"""The `recsearch` commands through click's runner, sharing the test's encoder."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from engine.runtime import Runtime
from tests.conftest import SAMPLE_CATALOG, write_jsonl
from web.cli import Context, cli


def run(runtime: Runtime, *args: str) -> Result:
    context = Context(runtime.settings, quiet=True, runtime=runtime)
    return CliRunner().invoke(cli, list(args), obj=context, catch_exceptions=False)


def test_ingest_build_search_status(runtime: Runtime, seed_index: Path) -> None:
    import shutil

    shutil.copytree(seed_index, runtime.settings.index_dir)  # reuse the seed's vectors
    result = run(runtime, "ingest", str(SAMPLE_CATALOG))
    assert result.exit_code == 0, result.output
    assert "325 inserted, 0 updated, 0 unchanged, 0 rejected" in result.output
    result = run(runtime, "build")
    assert result.exit_code == 0 and "published index v000002: 325 items, Flat" in result.output
    assert "recall@10 1.000" in result.output
    assert "up to date" in run(runtime, "build", "--if-stale").output
    table = run(runtime, "search", "skiing in the alps", "-k", "3").output.splitlines()
    assert table[0].split() == ["#", "score", "category", "id", "title"]
    assert len(table) == 5 and all(" mountain " in line for line in table[1:4])
    body = json.loads(run(runtime, "search", "Eiffel Tower", "--json", "-k", "1").output)
    assert body["results"][0]["id"] == "paris-france" and body["index_version"] == "v000002"
    status = run(runtime, "status").output
    assert "items      325" in status and "v000002: 325 items, Flat" in status


def test_ingest_reports_bad_rows_and_exits_non_zero(runtime: Runtime, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "title": "A"}, {"id": "b"}])
    result = CliRunner().invoke(
        cli, ["ingest", str(path)], obj=Context(runtime.settings, True, runtime)
    )
    assert result.exit_code == 1
    assert f"{path}:2: title: is required" in result.output
    assert "nothing was changed" in result.output
    result = run(runtime, "ingest", str(path), "--skip-invalid")
    assert result.exit_code == 0 and "1 inserted" in result.output and "1 rejected" in result.output
    rejects = Path(result.output.split("rejected rows with reasons: ")[1].strip())
    assert rejects.parent == runtime.settings.data_dir / "rejects"
    assert json.loads(rejects.read_text())["line"] == 2


def test_delete_and_db_upgrade(runtime: Runtime, tmp_path: Path) -> None:
    run(runtime, "ingest", str(write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "title": "A"}])))
    context = Context(runtime.settings, True, runtime)
    missing = CliRunner().invoke(cli, ["delete", "a", "zz"], obj=context)
    assert missing.exit_code != 0 and "'zz'" in str(missing.exception)
    assert "deleted 1 item(s)" in run(runtime, "delete", "a", "zz", "--missing-ok").output
    from engine.store.db import head_revision

    assert f"up to date (revision {head_revision()})" in run(runtime, "db", "upgrade").output
