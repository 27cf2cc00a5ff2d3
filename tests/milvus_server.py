"""A real Milvus standalone server for tests and benchmarks: the `milvus` package (2.3.5 from
PyPI) runs the server binary it carries, with embedded etcd, rocksmq and local storage.

Every component registers the machine's first routable address unless told otherwise, and
traffic here must stay on loopback: each component's ip is pinned to 127.0.0.1 before start.
The server is one process, started and stopped by its PID (never by name: other sessions'
servers may run on this machine).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
ROOT_TOKEN = "root:Milvus"  # the server's first user, when authorization is on


@dataclass(frozen=True)
class MilvusTarget:
    """Where a test's Milvus is, and the settings (Settings field names) that reach it."""

    kind: str  # "lite" or "server"
    uri: str
    settings: dict[str, str]


def available() -> str | None:
    """Why a server cannot start here, or None when it can."""
    try:
        import milvus  # noqa: F401
    except ImportError:
        return "the Milvus server package is not installed: pip install milvus==2.3.5"
    return None


@dataclass
class Server:
    uri: str
    pid: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    version: str
    # The package's server object: kept, because it stops the server when collected.
    handle: Any = None

    def stop(self) -> None:
        """Terminate the server by its PID, and kill it if it lingers (a test server's data
        is thrown away: no need to wait out its graceful stop, which takes seconds)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start(data_dir: Path, *, auth: bool = False, tls: tuple[Path, Path] | None = None) -> Server:
    """A server in data_dir on free loopback ports, healthy when this returns.

    auth: authorization on (the root user's token is ROOT_TOKEN). tls: (certificate, key)
    of the server, for one-way TLS.
    """
    from milvus import MilvusServer, MilvusServerConfig

    config = MilvusServerConfig(data_dir=str(data_dir))
    for component in COMPONENTS:
        config.set(f"{component}.ip", "127.0.0.1")
    # Ports: free ones at random, not the defaults another server may hold (the package
    # scans from each default and races with anything else starting meanwhile).
    keys = [k for k in config.configurable_items if k.endswith("_port")]
    ports = _free_ports(len(keys) + 2)
    for key, port in zip(keys, ports, strict=False):
        config.configs[key] = port
    # The embedded etcd's peer port is fixed (2380) unless its own config file says
    # otherwise: two servers on one machine need one each.
    data_dir.mkdir(parents=True, exist_ok=True)
    etcd = data_dir / "embed-etcd.yaml"
    client_url = f"http://127.0.0.1:{config.configs['etcd_port']}"
    peer_url = f"http://127.0.0.1:{ports[-1]}"
    etcd.write_text(
        f"listen-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n"
        f"listen-peer-urls: {peer_url}\ninitial-advertise-peer-urls: {peer_url}\n"
        f"initial-cluster: default={peer_url}\n"
    )
    embed = "  use:\n    embed: true"
    assert embed in config.template_text, "the milvus package's config template changed"
    config.template_text = config.template_text.replace(
        embed, f"  config:\n    path: {etcd}\n{embed}"
    )
    # Index every sealed segment, however small (Milvus's default leaves segments under
    # 1,024 rows unindexed and scans them): a test catalog then searches a real ANN index.
    config.set("indexCoord.segment.minSegmentNumRowsToEnableIndex", 1)
    if auth:
        config.set("authorization_enabled", True)
    if tls is not None:
        config.set("tls_mode", 1)
        config.set("server_pem_path", str(tls[0]))
        config.set("server_key_path", str(tls[1]))
    server = MilvusServer(config, wait_for_started=False)
    server.webservice_port = ports[-2]
    server.show_startup_banner = False
    server.start()
    try:
        _wait_healthy(server, data_dir)
    except BaseException:
        server.server_proc.kill()
        server.server_proc.wait(timeout=10)
        raise
    scheme = "https" if tls else "http"
    process = server.server_proc
    return Server(
        f"{scheme}://127.0.0.1:{server.listen_port}",
        process.pid,
        data_dir,
        process,
        __import__("milvus").__version__,
        server,
    )


def _wait_healthy(server: Any, data_dir: Path, timeout_s: float = 120.0) -> None:
    """Until the server answers its health check; raise with its log's error at once when it
    fails to start (a taken port leaves the process alive but never healthy)."""
    log = data_dir / "logs" / "milvus-stdout.log"
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{server.webservice_port}/healthz"
    while time.monotonic() < deadline:
        if server.server_proc.poll() is not None:
            raise RuntimeError(f"the Milvus server exited at start; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if b"OK" in response.read():
                    return
        except OSError:
            pass
        failed = _start_error(log)
        if failed:
            raise RuntimeError(f"the Milvus server failed to start: {failed} (log: {log})")
        time.sleep(0.2)
    raise TimeoutError(f"the Milvus server was not healthy after {timeout_s:.0f} s; see {log}")


def _start_error(log: Path) -> str | None:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if "[ERROR]" in line and ("failed to init" in line or "bind:" in line):
            return line[:300]
    return None


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1 with its key (the certificate is its own CA)."""
    cert, key = folder / "server.pem", folder / "server.key"
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is needed to make a test certificate")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all held open at once, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
