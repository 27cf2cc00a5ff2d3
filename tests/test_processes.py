"""Separate processes share one state: ingest, build and serve as a user runs them, a server
that picks up a new version without a restart, and a build killed mid-way (SIGKILL)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SAMPLE_CATALOG

pytestmark = pytest.mark.slow
RECSEARCH = [sys.executable, "-m", "web.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*RECSEARCH, "-q", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result


def test_ingest_build_serve_in_separate_processes(
    tmp_path: Path, seed_index: Path, db_url: str
) -> None:
    env = dict(os.environ, RECSEARCH_DATA_DIR=str(tmp_path / "var"), RECSEARCH_INDEX_POLL_S="0")
    env["RECSEARCH_DATABASE_URL"] = db_url
    shutil.copytree(seed_index, tmp_path / "var" / "indexes")
    cli(env, "ingest", str(SAMPLE_CATALOG))
    first = cli(env, "build").stdout
    assert "published index v000002" in first

    port = free_port()
    server = subprocess.Popen(
        [*RECSEARCH, "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(f"{base}/readyz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.5)
        status, body = get(f"{base}/v1/search?q=Eiffel+Tower&k=3")
        assert status == 200 and body["results"][0]["id"] == "paris-france"
        assert body["index_version"] == "v000002"

        # Another process deletes an item and publishes a new version: the server follows.
        cli(env, "delete", "paris-france")
        assert "published index v000003" in cli(env, "build").stdout
        status, body = get(f"{base}/v1/search?q=Eiffel+Tower&k=3")
        assert body["index_version"] == "v000003"
        assert "paris-france" not in [r["id"] for r in body["results"]]

        # A build killed while embedding leaves v000003 serving and no new version.
        rows = [json.loads(line) for line in SAMPLE_CATALOG.read_text().splitlines()]
        changed = tmp_path / "changed.jsonl"
        changed.write_text(
            "".join(json.dumps(dict(r, title=r["title"] + " (new)")) + "\n" for r in rows)
        )
        cli(env, "ingest", str(changed))
        build = subprocess.Popen(
            [*RECSEARCH, "build"], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True
        )
        assert build.stderr is not None
        seen = ""
        while "embed" not in seen:
            chunk = build.stderr.read(64)
            assert chunk, f"build ended before embedding: {seen}"
            seen += chunk
        time.sleep(1.0)
        build.send_signal(signal.SIGKILL)
        build.wait(timeout=30)
        build.stderr.close()
        assert (tmp_path / "var" / "indexes" / "CURRENT").read_text().strip() == "v000003"
        assert not (tmp_path / "var" / "indexes" / "v000004").exists()
        status, body = get(f"{base}/v1/search?q=beach&k=3")
        assert status == 200 and body["index_version"] == "v000003"
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stdout:
            server.stdout.close()
