"""Kept-alive connections spread over `recsearch serve`'s workers (web.worker.Connections): a
connection stays with the worker that accepted it, and left to gunicorn's race for each one,
4 connections opened together landed all on one worker in a quarter of the tries here."""

from __future__ import annotations

import http.client
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.serving import built_env


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets a process holds open."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            found.add(int(link[len("socket:[") : -1]))
    return found


def established_on(port: int) -> set[int]:
    """The inodes of the established TCP connections (IPv4) whose local port is `port`."""
    found = set()
    with open("/proc/net/tcp", encoding="ascii") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01":
                found.add(inode)
    return found


def held(workers: set[int], port: int) -> list[int]:
    """How many of the server's connections each worker holds, fewest first."""
    connected = established_on(port)
    return sorted(len(socket_inodes(pid) & connected) for pid in workers)


def search(
    connection: http.client.HTTPConnection, q: str, start: threading.Barrier, statuses: list[int]
) -> None:
    """One search on the connection, once every thread is ready (all connect at once: the
    race gunicorn's workers run)."""
    start.wait()
    connection.request("GET", f"/v1/search?q={q.replace(' ', '+')}&k=3")
    response = connection.getresponse()
    response.read()
    statuses.append(response.status)


@pytest.mark.slow
def test_connections_opened_together_are_split_between_the_workers(
    tmp_path: Path, seed_index: Path, serve: Any
) -> None:
    server = serve(built_env(tmp_path / "var", seed_index), workers=2, threads=2)
    server.wait_ready()
    workers = server.worker_pids()
    assert len(workers) == 2
    for attempt in range(6):
        start = threading.Barrier(4)
        connections = [
            http.client.HTTPConnection("127.0.0.1", server.port, timeout=60) for _ in range(4)
        ]
        statuses: list[int] = []
        threads = [
            threading.Thread(target=search, args=(c, f"beach {attempt} {n}", start, statuses))
            for n, c in enumerate(connections)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert statuses == [200] * 4
        # Each connection is kept alive, with the worker that accepted it.
        assert held(workers, server.port) == [2, 2], f"attempt {attempt}"
        for c in connections:
            c.close()
        deadline = time.monotonic() + 30
        while held(workers, server.port) != [0, 0]:  # the workers saw them close
            assert time.monotonic() < deadline
            time.sleep(0.05)
