"""A data dir whose disk fills: the server keeps answering searches from the index it
serves, refuses writes it cannot store with 507 naming where, reports itself degraded, keeps
every worker alive, and recovers without a restart once space returns. A real tmpfs of a few
MiB mounted by the test (CI runs as root; elsewhere the test skips, saying why), on SQLite
(the database on the full disk) and PostgreSQL (only the data dir full)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.serving import Served, built_env, get, post

KEY = "disk-full-test-key-0123456789abcdef0123456789"
DISK_MB = 64


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_MB MiB, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """A file that takes every free byte of the disk."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12):  # MiBs, then the last few KiB
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def events(n: int) -> dict[str, Any]:
    ids = [f"disk-{n}-{i}" for i in range(20)]
    return {
        "events": [
            {"event_id": e, "user_id": f"u{n % 7}", "item_id": "kyoto-japan", "type": "click"}
            for e in ids
        ]
    }


@pytest.mark.slow
def test_a_full_data_dir_degrades_the_server_and_it_recovers_by_itself(
    small_disk: Path,
    db_url: str,
    seed_index: Path,
    tmp_path_factory: pytest.TempPathFactory,
    serve: Any,
) -> None:
    data = small_disk / "var"
    data.mkdir()
    # The encoder's ONNX export (87 MB) stays on the big disk: this run's shared one.
    exports = next(tmp_path_factory.getbasetemp().glob("encoder*/var/encoders"))
    (data / "encoders").symlink_to(exports, target_is_directory=True)
    sqlite_db = data / "recsearch.db"
    database = f"sqlite:///{sqlite_db}" if db_url.startswith("sqlite") else db_url
    env = built_env(data, seed_index, database_url=database, RECSEARCH_API_KEY=KEY)
    server: Served = serve(env, workers=2, threads=4)
    server.wait_ready()
    workers = server.worker_pids()
    acknowledged: list[str] = []

    def post_events(n: int) -> tuple[int, Any]:
        body = events(n)
        status, answer = post(f"{server.base}/v1/events", body, key=KEY)
        assert status in (200, 507), (status, answer)
        if status == 200:
            acknowledged.extend(e["event_id"] for e in body["events"])
        return status, answer

    assert post_events(0)[0] == 200
    version = get(f"{server.base}/v1/search?q=beach")[1]["index_version"]
    filler = fill(small_disk)

    # Full: searches answer from the serving index; the probe says degraded, and why.
    for i in range(20):
        query = urllib.parse.urlencode({"q": f"old town {i}"})
        status, body = get(f"{server.base}/v1/search?{query}")
        assert status == 200 and body["index_version"] == version and body["results"], body
    status, ready = get(f"{server.base}/readyz")
    assert status == 200 and ready["status"] == "degraded", ready
    assert ready["disk"].startswith("full:") and str(data) in ready["disk"]

    # Writes: on SQLite (its file on the full disk) refused with 507 naming the file, never
    # a 500; on PostgreSQL stored as ever.
    refused = None
    for n in range(1, 400):
        status, answer = post_events(n)
        if status == 507:
            refused = answer
            break
        if not db_url.startswith("sqlite") and n >= 20:
            break
    if db_url.startswith("sqlite"):
        assert refused is not None, "SQLite stored every write on a full disk?"
        assert refused["error"] == "insufficient_storage" and str(sqlite_db) in refused["message"]
    else:
        assert refused is None

    # A rebuild on the full disk fails with its real reason, and leaves no staging folder.
    status, job = post(f"{server.base}/admin/api/rebuild", {}, key=KEY)
    assert status in (202, 507), (status, job)
    if status == 202:
        job_id = job["id"]
        deadline = time.monotonic() + 120
        while True:
            job = admin_get(server, f"/admin/api/jobs/{job_id}")
            if job["state"] not in ("queued", "running") or time.monotonic() > deadline:
                break
            if db_url.startswith("sqlite"):
                break  # its end is recorded once space returns (below)
            time.sleep(0.2)

    assert server.process.poll() is None and server.worker_pids() == workers

    # Space returns: writes succeed again with no restart, and a rebuild publishes.
    filler.unlink()
    deadline = time.monotonic() + 30
    n = 1000
    while post_events(n)[0] != 200:
        assert time.monotonic() < deadline, "writes did not recover"
        n += 1
        time.sleep(0.2)
    if status == 202:
        deadline = time.monotonic() + 60
        job = admin_get(server, f"/admin/api/jobs/{job_id}")
        while job["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = admin_get(server, f"/admin/api/jobs/{job_id}")
        assert job["state"] == "failed", job
        assert "space" in (job["error"] or "").lower(), job  # the real cause, not "orphaned"
    assert not list((data / "indexes").glob(".staging-*"))
    status, job = post(f"{server.base}/admin/api/rebuild", {}, key=KEY)
    assert status == 202, job
    deadline = time.monotonic() + 120
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = admin_get(server, f"/admin/api/jobs/{job['id']}")
    assert job["state"] == "succeeded", job
    status, ready = get(f"{server.base}/readyz")
    assert status == 200 and ready["status"] == "ready", ready
    assert server.process.poll() is None and server.worker_pids() == workers

    # Nothing acknowledged was lost, and the SQLite file is sound.
    if db_url.startswith("sqlite"):
        with sqlite3.connect(sqlite_db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = {r[0] for r in conn.execute("SELECT event_id FROM events")}
    else:
        engine = create_engine(db_url)
        with engine.connect() as conn:
            stored = set(conn.scalars(text("SELECT event_id FROM events")))
        engine.dispose()
    assert acknowledged and set(acknowledged) <= stored


def admin_get(server: Served, path: str) -> Any:
    """An admin GET with the key."""
    import urllib.request

    headers = {"Authorization": f"Bearer {KEY}"}
    request = urllib.request.Request(server.base + path, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())
