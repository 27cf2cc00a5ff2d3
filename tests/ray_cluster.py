"""A real Ray cluster on this machine for tests and benchmarks: a head and worker nodes, each
a `ray start --block` process on 127.0.0.2, stopped by its PID (never by Ray's own stop
command, which ends every Ray node of the machine, other sessions' included).

Traffic stays on loopback: every node and the driver are pinned to 127.0.0.2 (given 127.0.0.1,
Ray would register the machine's routable address instead), every port is chosen free rather
than left to Ray's defaults, and the session folder is a short temporary one of our own (Ray's
Unix sockets live in it, and a socket path has at most 107 characters). Token authentication
is on, with a token generated here and handed to the nodes and the driver through
RAY_AUTH_TOKEN (nothing is written to ~/.ray).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.2"
WORKER_PORTS = 40  # per node: one per worker process it may start


def available() -> str | None:
    """Why a cluster cannot start here, or None when it can."""
    if importlib.util.find_spec("ray") is None:  # not imported: see driver_env
        return "Ray is not installed: pip install -e '.[ray]'"
    if not Path(f"/proc/{os.getpid()}/stat").exists():
        return "stopping a cluster by PID needs /proc (Linux)"
    return None


@dataclass
class RayCluster:
    """Nodes started by start(); address is what RECSEARCH_RAY_ADDRESS takes."""

    address: str
    env: dict[str, str]  # RAY_AUTH_* for a driver: set them before connecting
    temp_dir: Path
    nodes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def processes(self) -> list[int]:
        """PIDs of every process the nodes started (raylets, workers, actors), nodes last."""
        found: list[int] = []
        for node in self.nodes:
            found.extend(descendants(node.pid))
        return found + [node.pid for node in self.nodes]

    def workers(self, name: str) -> list[int]:
        """PIDs of the worker processes whose title (Ray names it after the actor's class,
        `ray::ClassName...`) contains name."""
        return [pid for pid in self.processes() if name in _command_line(pid)]

    @contextmanager
    def driver_env(self) -> Iterator[None]:
        """This process's environment set for connecting as a driver, restored afterwards.

        Ray reads RAY_AUTH_MODE into its config when first imported; a process that imported
        it earlier has its config read again here, as Ray does itself when it turns tokens on.
        """
        saved = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        if "ray" in sys.modules:
            from ray._raylet import Config

            Config.initialize("")
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def stop(self) -> None:
        """SIGTERM each node (it stops what it started), then SIGKILL whatever of theirs is
        left, by PID; the session folder goes last."""
        pids = self.processes()
        for node in reversed(self.nodes):  # workers first: the head outlives its members
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in self.nodes:
            try:
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(timeout=10)
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)
        for pid in pids:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start(nodes: int = 2, cpus_per_node: int = 1, *, timeout_s: float = 90) -> RayCluster:
    """A cluster of `nodes` nodes (the first is the head) with cpus_per_node CPUs each, every
    node registered when this returns. Ray's own output goes to the session folder's logs."""
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        raise RuntimeError(f"{ray}: not found (pip install -e '.[ray]')")
    temp_dir = Path(tempfile.mkdtemp(prefix="rsray", dir="/tmp"))
    token = secrets.token_hex(32)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    # A node drains on SIGTERM (Ray 2.60: up to 30 s, for Serve replicas); a test's need not.
    node_env = {**os.environ, **env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    gcs_port = free_port()
    cluster = RayCluster(address=f"{HOST}:{gcs_port}", env=env, temp_dir=temp_dir)
    try:
        for n in range(nodes):
            low = free_port_range(WORKER_PORTS)
            command = [
                str(ray),
                "start",
                "--block",
                f"--node-ip-address={HOST}",
                f"--num-cpus={cpus_per_node}",
                "--num-gpus=0",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
                f"--object-store-memory={256 * 1024 * 1024}",
                f"--node-manager-port={free_port()}",
                f"--object-manager-port={free_port()}",
                f"--min-worker-port={low}",
                f"--max-worker-port={low + WORKER_PORTS - 1}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}",
            ]
            if n == 0:
                command += [
                    "--head",
                    f"--port={gcs_port}",
                    "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}",
                ]
            else:
                command.append(f"--address={cluster.address}")
            log = open(temp_dir / f"node{n}.log", "wb")  # noqa: SIM115 (the child holds it)
            cluster.nodes.append(
                subprocess.Popen(
                    command, env=node_env, stdout=log, stderr=subprocess.STDOUT, cwd=temp_dir
                )
            )
            log.close()
            _wait_nodes(cluster, n + 1, timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_nodes(cluster: RayCluster, count: int, timeout_s: float) -> None:
    """Until `count` nodes are alive, asked of the GCS by a short-lived driver process (this
    one stays unconnected: a build connects and disconnects on its own)."""
    code = (
        "import ray, sys; "
        f"ray.init(address={cluster.address!r}, _node_ip_address={HOST!r}, "
        "logging_level='error', log_to_driver=False); "
        "print(sum(1 for n in ray.nodes() if n['Alive']))"
    )
    deadline = time.monotonic() + timeout_s
    log = cluster.temp_dir / f"node{count - 1}.log"
    while True:
        for node in cluster.nodes:
            if node.poll() is not None:
                raise RuntimeError(f"a Ray node exited with {node.returncode}: {log.read_text()}")
        if _port_open(cluster.address) or count > 1:
            done = subprocess.run(
                [sys.executable, "-c", code],
                env={**os.environ, **cluster.env},
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode == 0 and int(done.stdout.split()[-1]) >= count:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} Ray node(s) not up after {timeout_s}s: {log.read_text()}")
        time.sleep(0.5)


def free_port() -> int:
    """A TCP port nothing listens on now, on any address (Ray's servers bind all of them)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def free_port_range(size: int) -> int:
    """The first of `size` consecutive free ports, from a random spot in 20000-59999."""
    for _ in range(200):
        low = 20_000 + secrets.randbelow(40_000 - size)
        if all(_bindable(port) for port in range(low, low + size)):
            return low
    raise RuntimeError(f"no {size} consecutive free ports found")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below pid, read from /proc (children before their own children)."""
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                queue.append(child)
    return found


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
