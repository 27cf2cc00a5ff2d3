"""`recsearch serve` as production runs it: separate processes sharing one state (ingest, build
and serve as a user runs them, a new version picked up without a restart, a build killed
mid-way), gunicorn workers replaced when killed, and SIGTERM draining a request in flight."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SAMPLE_CATALOG
from tests.serving import RECSEARCH, built_env, cli, get, post


@pytest.mark.slow
def test_ingest_build_serve_in_separate_processes(
    tmp_path: Path, seed_index: Path, db_url: str, serve: Any
) -> None:
    env = dict(os.environ, RECSEARCH_DATA_DIR=str(tmp_path / "var"), RECSEARCH_INDEX_POLL_S="0")
    env["RECSEARCH_DATABASE_URL"] = db_url
    shutil.copytree(seed_index, tmp_path / "var" / "indexes")
    cli(env, "ingest", str(SAMPLE_CATALOG))
    first = cli(env, "build").stdout
    assert "published index v000002" in first

    server = serve(env)
    server.wait_ready()
    base = server.base
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


@pytest.mark.slow
def test_gunicorn_workers_replace_the_dead_and_drain_on_sigterm(
    tmp_path: Path, seed_index: Path, serve: Any
) -> None:
    server = serve(built_env(tmp_path / "var", seed_index))
    base = server.base
    server.wait_ready()
    for _ in range(6):  # both workers answer
        status, body = get(f"{base}/v1/search?q=Eiffel+Tower&k=3")
        assert status == 200 and body["results"][0]["id"] == "paris-france"

    victim = min(server.worker_pids())
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while victim in server.worker_pids() or len(server.worker_pids()) < 2:
        assert time.monotonic() < deadline, "the dead worker was not replaced"
        time.sleep(0.5)
    server.wait_ready()

    # A slow request in flight (a batch of events updating many users), then SIGTERM.
    items = [json.loads(line)["id"] for line in SAMPLE_CATALOG.read_text().splitlines()]
    batch = {
        "events": [
            {"user_id": f"u{n % 200}", "item_id": items[n % len(items)], "type": "click"}
            for n in range(1000)
        ]
    }
    answers: list[tuple[int, Any]] = []
    sender = threading.Thread(target=lambda: answers.append(post(f"{base}/v1/events", batch)))
    sender.start()
    time.sleep(0.2)
    server.process.send_signal(signal.SIGTERM)
    sender.join(timeout=60)
    assert answers and answers[0][0] == 200 and answers[0][1]["recorded"] == 1000
    assert server.process.wait(timeout=60) == 0


def test_each_worker_s_onnx_encoder_takes_every_core_and_spinning_pools_a_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ONNX Runtime's pool sleeps when idle (allow_spinning 0), so a worker's ONNX encoder may
    use every core; torch's encoder and the OpenMP/MKL/OpenBLAS pools spin, so workers share
    the cores among them; RECSEARCH_ENCODER_THREADS overrides both."""
    from engine.core.config import Settings
    from web.server import encoder_threads, pool_threads

    monkeypatch.setattr("web.server.cores", lambda: 8)
    onnx, int8, torch = (Settings(encoder=e) for e in ("onnx", "onnx-int8", "torch"))
    assert [encoder_threads(s, 4) for s in (onnx, int8, torch)] == [8, 8, 2]
    assert [pool_threads(s, 4) for s in (onnx, int8, torch)] == [2, 2, 2]
    assert encoder_threads(onnx, 16) == 8 and pool_threads(onnx, 16) == 1
    pinned = Settings(encoder="onnx", encoder_threads=3)
    assert encoder_threads(pinned, 4) == pool_threads(pinned, 4) == 3


@pytest.mark.slow
def test_the_server_says_how_it_split_the_cores(
    tmp_path: Path, seed_index: Path, serve: Any
) -> None:
    """The startup line names the split a worker's encoder got (every core, with ONNX)."""
    from web.server import cores

    env = built_env(tmp_path / "var", seed_index)
    env.pop("RECSEARCH_ENCODER_THREADS", None)
    env.pop("RECSEARCH_ENCODER", None)
    server = serve(env)
    server.wait_ready()
    status, body = get(f"{server.base}/v1/search?q=Eiffel+Tower&k=3")
    assert status == 200 and body["results"][0]["id"] == "paris-france"
    assert server.stop() == 0
    output = "".join(server.lines)
    spinning = max(1, cores() // 2)
    expected = f"2 workers × 2 threads, {cores()} encoder threads each ({spinning} for pools"
    assert expected in output, output[-3000:]


@pytest.mark.slow
def test_the_server_logs_one_ready_line_once_its_workers_have_loaded(
    tmp_path: Path, seed_index: Path, serve: Any
) -> None:
    """'recsearch ready on URL: N workers loaded ...' comes once, when every worker has loaded
    the index and the encoder: from then on each search is answered. A worker that replaces
    a dead one says so in a line of its own."""
    server = serve(built_env(tmp_path / "var", seed_index))
    deadline = time.monotonic() + 180
    while server.log_count("recsearch ready on") == 0:
        assert server.process.poll() is None, "".join(server.lines)
        assert time.monotonic() < deadline, "no ready line"
        time.sleep(0.1)
    line = next(line for line in server.lines if "recsearch ready on" in line)
    assert f"recsearch ready on {server.base}: 2 workers loaded " in line, line
    assert "s after listening; index v000002, encoder onnx" in line, line
    listening = next(i for i, text in enumerate(server.lines) if "Listening at:" in text)
    assert listening < server.lines.index(line)
    for _ in range(6):  # at once, from any worker: no 503 while one still loads
        assert server.search("Eiffel Tower")[0] == "paris-france"
        status, ready = get(f"{server.base}/readyz")
        assert status == 200 and ready["workers"] == "2 of 2 loaded", ready

    victim = min(server.worker_pids())
    os.kill(victim, signal.SIGKILL)
    while server.log_count("(it replaces one)") == 0:
        assert time.monotonic() < deadline + 120, "".join(server.lines[-20:])
        time.sleep(0.1)
    assert server.log_count("recsearch ready on") == 1
    assert server.search("Eiffel Tower")[0] == "paris-france"


def test_the_ready_line_names_the_query_encoder_when_queries_have_their_own(
    tmp_path: Path,
) -> None:
    from engine.core.config import Settings
    from engine.runtime import Runtime
    from web.server import serving

    runtime = Runtime(Settings(data_dir=tmp_path / "var", query_encoder="onnx-int8"))
    assert serving(runtime).startswith("no index yet")  # loads no encoder to say so
    versions = iter(["v000003"])
    runtime.live.store.current_version = lambda: next(versions)  # type: ignore[method-assign]
    assert serving(runtime) == "index v000003, encoder onnx (queries onnx-int8)"
    runtime.close()
