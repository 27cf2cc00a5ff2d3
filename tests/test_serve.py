"""`recsearch serve` as production runs it: gunicorn workers on one database, a worker
killed and replaced, and SIGTERM draining a request in flight."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SAMPLE_CATALOG
from tests.test_processes import RECSEARCH, cli, free_port, get

pytestmark = pytest.mark.slow


def workers_of(master: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    return {int(pid) for pid in out.stdout.split()}


def wait_ready(base: str, server: subprocess.Popen[str], workers: int) -> None:
    deadline = time.monotonic() + 180
    while len(workers_of(server.pid)) < workers or not _ready(base):
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        assert time.monotonic() < deadline, "server did not become ready"
        time.sleep(0.5)


def _ready(base: str) -> bool:
    try:
        return get(f"{base}/readyz")[0] == 200
    except OSError:
        return False


def post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def start_serve(env: dict[str, str], data: Path, seed_index: Path) -> tuple[Any, str]:
    """(process, base URL) of `recsearch serve --workers 2 --threads 2` on the sample catalog,
    built in data (the seed's vectors reused); the caller waits for it to be ready."""
    shutil.copytree(seed_index, data / "indexes")
    cli(env, "ingest", str(SAMPLE_CATALOG))
    cli(env, "build")
    port = free_port()
    server = subprocess.Popen(
        [*RECSEARCH, "serve", "--port", str(port), "--workers", "2", "--threads", "2"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return server, f"http://127.0.0.1:{port}"


def test_gunicorn_workers_replace_the_dead_and_drain_on_sigterm(
    tmp_path: Path, seed_index: Path
) -> None:
    env = dict(os.environ, RECSEARCH_DATA_DIR=str(tmp_path / "var"))
    server, base = start_serve(env, tmp_path / "var", seed_index)
    try:
        wait_ready(base, server, 2)
        for _ in range(6):  # both workers answer
            status, body = get(f"{base}/v1/search?q=Eiffel+Tower&k=3")
            assert status == 200 and body["results"][0]["id"] == "paris-france"

        victim = min(workers_of(server.pid))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while victim in workers_of(server.pid) or len(workers_of(server.pid)) < 2:
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            time.sleep(0.5)
        wait_ready(base, server, 2)

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
        server.send_signal(signal.SIGTERM)
        sender.join(timeout=60)
        assert answers and answers[0][0] == 200 and answers[0][1]["recorded"] == 1000
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
        if server.stdout:
            server.stdout.close()


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


def test_the_server_says_how_it_split_the_cores(tmp_path: Path, seed_index: Path) -> None:
    """The startup line names the split a worker's encoder got (every core, with ONNX)."""
    from web.server import cores

    env = dict(os.environ, RECSEARCH_DATA_DIR=str(tmp_path / "var"))
    env.pop("RECSEARCH_ENCODER_THREADS", None)
    env.pop("RECSEARCH_ENCODER", None)
    server, base = start_serve(env, tmp_path / "var", seed_index)
    try:
        wait_ready(base, server, 2)
        status, body = get(f"{base}/v1/search?q=Eiffel+Tower&k=3")
        assert status == 200 and body["results"][0]["id"] == "paris-france"
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    spinning = max(1, cores() // 2)
    expected = f"2 workers × 2 threads, {cores()} encoder threads each ({spinning} for pools"
    assert expected in output, output[-3000:]
