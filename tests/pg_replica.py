"""A private PostgreSQL primary and its streaming replica (or one server alone), made for a
test in a temp folder.

`initdb` a primary, start it on a free loopback port, `pg_basebackup -R` a replica from it and
start that on another free loopback port; `StreamingPair.stop()` stops both by their data
folders (pg_ctl) and removes the folder. The servers run as the `postgres` user when the tests
run as root (PostgreSQL refuses root), as they do in CI. Nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

BIN = Path("/usr/lib/postgresql/15/bin")
PROGRAMS = ("initdb", "pg_ctl", "pg_basebackup", "postgres")


def missing() -> str | None:
    """Why a pair cannot be made here (None when it can)."""
    absent = [p for p in PROGRAMS if not (BIN / p).is_file()]
    if absent:
        return f"PostgreSQL server programs missing from {BIN}: {', '.join(absent)}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to run PostgreSQL as postgres"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(*args: str, timeout_s: float = 60) -> None:
    command = [str(BIN / args[0]), *args[1:]]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")


class Server:
    """One PostgreSQL server: a data folder, a loopback port, a log."""

    def __init__(self, root: Path, name: str) -> None:
        self.data = root / name
        self.log = root / f"{name}.log"
        self.sockets = root / f"{name}-sockets"
        self.port = free_port()
        self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.sockets.mkdir(exist_ok=True)
        _chown(self.sockets)
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.sockets} -c fsync=off"
        )
        _run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server of this data folder (pg_ctl finds its postmaster's PID there)."""
        if self.running:
            _run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self.running = False


class StreamingPair:
    """A primary and a streaming replica of it; the database `recsearch` exists on both."""

    def __init__(self, apply_delay_s: float = 0.0) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="recsearch-pg-"))
        _chown(self.root)
        self.primary = Server(self.root, "primary")
        self.replica = Server(self.root, "replica")
        try:
            _create(self.primary)
            _run(
                "pg_basebackup",
                *("-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"),
                *("-D", str(self.replica.data), "-R", "-X", "stream", "-c", "fast", "-N"),
            )
            if apply_delay_s:
                with (self.replica.data / "postgresql.auto.conf").open("a") as conf:
                    conf.write(f"recovery_min_apply_delay = '{int(apply_delay_s * 1000)}ms'\n")
            self.replica.start()
        except BaseException:
            self.stop()
            raise

    @property
    def primary_url(self) -> str:
        return self.primary.url("recsearch")

    @property
    def replica_url(self) -> str:
        return self.replica.url("recsearch")

    def on_replica(self, sql: str) -> object:
        engine = create_engine(self.replica.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                return connection.execute(text(sql)).scalar()
        finally:
            engine.dispose()

    def wait_replayed(self, timeout_s: float = 20) -> None:
        """Until the replica has replayed everything the primary has written so far."""
        engine = create_engine(self.primary.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            target = connection.execute(text("SELECT pg_current_wal_lsn()::text")).scalar()
        engine.dispose()
        deadline = time.monotonic() + timeout_s
        query = f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
        while not self.on_replica(query):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replica did not replay up to {target}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop both servers; the folder goes only once neither runs."""
        for server in (self.replica, self.primary):
            try:
                server.stop()
            except (RuntimeError, subprocess.TimeoutExpired):
                server.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateServer:
    """One private PostgreSQL server (no replica) with the database `recsearch`, for tests
    that stop, crash and restart it mid-load."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="recsearch-pg-"))
        _chown(self.root)
        self.server = Server(self.root, "server")
        try:
            _create(self.server)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return self.server.url("recsearch")

    def close(self) -> None:
        try:
            self.server.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            self.server.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _create(server: Server) -> None:
    """initdb a new cluster for server, start it, and create the database `recsearch`."""
    _run("initdb", "-D", str(server.data), "-A", "trust", "-U", "postgres", "-N")
    server.start()
    engine = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("CREATE DATABASE recsearch"))
    engine.dispose()


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)
