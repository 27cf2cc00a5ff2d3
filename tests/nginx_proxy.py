"""Debian's nginx in front of a `recsearch serve`, for tests and benchmarks: deploy/nginx.conf
filled in, run unprivileged-style under a prefix folder of its own (pid, logs, temp files),
in the foreground, and stopped by its PID (other sessions' nginx may run on this machine)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "nginx.conf"


def binary() -> str | None:
    """nginx on PATH, or where Debian puts it (/usr/sbin, not on every user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


def available() -> str | None:
    """Why nginx cannot start here, or None when it can."""
    if binary() is None:
        return "nginx is not installed: apt-get install nginx-light (Debian's nginx)"
    return None


def render(listen: str, upstream: str) -> str:
    """deploy/nginx.conf with its two placeholders filled in, as envsubst would."""
    text = TEMPLATE.read_text(encoding="utf-8")
    return text.replace("${LISTEN}", listen).replace("${UPSTREAM}", upstream)


@dataclass
class Nginx:
    port: int
    prefix: Path
    process: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to the master (a fast stop), SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start(prefix: Path, upstream_port: int, port: int | None = None) -> Nginx:
    """nginx on 127.0.0.1:`port` (a free one by default) proxying to 127.0.0.1:`upstream_port`,
    with the repository's config; returns once it accepts connections."""
    nginx = binary()
    assert nginx is not None, available()
    port = port or _free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "temp").mkdir(exist_ok=True)
    config = render(f"127.0.0.1:{port}", f"127.0.0.1:{upstream_port}")
    if os.geteuid() == 0:
        # A root master hands its workers to `nobody`, who cannot enter a private temp folder.
        config = "user root;\n" + config
    (prefix / "nginx.conf").write_text(config, encoding="utf-8")
    process = subprocess.Popen(
        [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = Nginx(port, prefix, process)
    deadline = time.monotonic() + 10
    while True:
        assert process.poll() is None, f"nginx exited: {server.log()}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            assert time.monotonic() < deadline, f"nginx did not listen: {server.log()}"
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
