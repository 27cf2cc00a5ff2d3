"""Real `recsearch` processes for tests: the CLI in a subprocess, and `recsearch serve` started,
waited for and stopped one way (the `serve` fixture in tests/conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, SAMPLE_CATALOG

RECSEARCH = [sys.executable, "-m", "web.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout_s: float = 10) -> tuple[int, Any]:
    """(status, JSON body) of a GET; an HTTP error's body too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def post(url: str, body: Any, *, key: str | None = None, timeout_s: float = 60) -> tuple[int, Any]:
    """(status, JSON body) of a JSON POST, with the API key when given."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`recsearch -q ARGS` in a subprocess; asserts it succeeded."""
    result = subprocess.run(
        [*RECSEARCH, "-q", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result


def workers_of(master: int) -> set[int]:
    """The pids of a process's children (gunicorn's workers)."""
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    return {int(pid) for pid in out.stdout.split()}


def built_env(
    data_dir: Path,
    seed_index: Path,
    *,
    database_url: str | None = None,
    encoder_exports: Path | None = None,
    **variables: str,
) -> dict[str, str]:
    """The environment of a data dir holding the sample catalog, ingested and built by the CLI
    (the seed index's vectors reused). encoder_exports: a data dir whose ONNX exports to copy,
    so a fresh one does not export and check the model again (tens of seconds)."""
    env = dict(os.environ, RECSEARCH_DATA_DIR=str(data_dir), **variables)
    if database_url is not None:
        env["RECSEARCH_DATABASE_URL"] = database_url
    shutil.copytree(seed_index, data_dir / "indexes")
    if encoder_exports is not None and (encoder_exports / "encoders").is_dir():
        shutil.copytree(encoder_exports / "encoders", data_dir / "encoders")
    cli(env, "ingest", str(SAMPLE_CATALOG))
    cli(env, "build")
    return env


class Served:
    """`recsearch [-v] serve` in a subprocess, its output collected line by line."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        workers: int = 2,
        threads: int = 2,
        verbose: bool = False,
        dev: bool = False,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers = 0 if dev else workers
        self.lines: list[str] = []
        command = [*RECSEARCH, *(["-v"] if verbose else []), "serve", "--port", str(self.port)]
        command += ["--dev"] if dev else ["--workers", str(workers), "--threads", str(threads)]
        self.process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> set[int]:
        return workers_of(self.process.pid)

    def wait_ready(self, timeout_s: float = 180) -> None:
        """Until /readyz answers 200 and every worker is up; fails with the server's output
        if it exits first."""
        deadline = time.monotonic() + timeout_s
        while len(self.worker_pids()) < self.workers or not self._ready():
            assert self.process.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.5)

    def _ready(self) -> bool:
        try:
            return get(f"{self.base}/readyz")[0] == 200
        except OSError:
            return False

    def log_count(self, fragment: str) -> int:
        return sum(fragment in line for line in list(self.lines))

    def search(self, q: str, k: int = 3) -> list[str]:
        query = urllib.parse.urlencode({"q": q, "k": k})
        status, body = get(f"{self.base}/v1/search?{query}")
        assert status == 200, body
        return [r["id"] for r in body["results"]]

    def stop(self) -> int | None:
        """SIGTERM (a drain), then SIGKILL if it does not end; its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode


class WorkerProcess:
    """`recsearch worker` in a subprocess, its output collected."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "a")  # noqa: SIM115  (closed in wait)
        self.process = subprocess.Popen(
            [*RECSEARCH, "worker", "--poll", "0.2"],
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    @property
    def name_fragment(self) -> str:
        return f":{self.process.pid}"

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)  # by PID: our own child
        self.wait(30)
