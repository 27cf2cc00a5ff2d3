"""Failover trials of PostgreSQL read replicas under load: a replica crashes and comes back,
again and again, while `recsearch serve` answers searches; every failed search is counted.

    .venv/bin/python bench/replica_failover.py [--trials 5] [--threads 4] [--out FILE]

A private primary and a streaming replica (tests/pg_replica.py: `initdb`, `pg_basebackup -R`,
`pg_ctl` on loopback ports, in a temp folder), the sample catalog ingested and built, and a
real `recsearch serve` (2 workers) with RECSEARCH_DATABASE_REPLICA_URL set. Load: --threads
clients searching as fast as they can, half anonymous and half as one of 50 users, every
text different (no cache answers). Each trial: 2 s of load with the replica up, then the
replica stopped in `immediate` mode (a crash: no shutdown checkpoint) for 3 s of load, then
started again, and the load goes on until /metrics shows it up again and 2 s more. The
table counts, per trial, searches, non-200 answers and socket errors in each phase, and the
seconds from the replica's restart until the server used it again. Prints a table and
writes JSON (default bench/results/replica_failover.json).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pg_replica import StreamingPair, missing  # noqa: E402
from tests.serving import Served, cli  # noqa: E402

CATALOG = ROOT / "data" / "catalog.jsonl"
WORDS = "old town beach museum mountain lake food night market island temple garden".split()


class Load:
    """Client threads searching; counts per phase (the phase is switched by the trial)."""

    def __init__(self, base: str, threads: int) -> None:
        self.base = base
        self.phase = "up"
        self.counts: dict[str, dict[str, int]] = {}
        self.errors: list[str] = []  # the first answers that were not 200, with the phase
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._n = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def take(self) -> dict[str, dict[str, int]]:
        with self._lock:
            counts, self.counts = self.counts, {}
        return counts

    def _count(self, phase: str, what: str) -> None:
        with self._lock:
            row = self.counts.setdefault(phase, {"searches": 0, "non_200": 0, "socket_errors": 0})
            row[what] += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._n += 1
                n = self._n
            phase = self.phase
            query = {"q": f"{WORDS[n % len(WORDS)]} {WORDS[(n // 7) % len(WORDS)]} {n}", "k": 5}
            if n % 2:
                query["user_id"] = f"u{n % 50}"
            url = f"{self.base}/v1/search?{urllib.parse.urlencode(query)}"
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    ok = response.status == 200
                self._count(phase, "searches")
                if not ok:
                    self._count(phase, "non_200")
            except urllib.error.HTTPError as error:
                self._count(phase, "searches")
                self._count(phase, "non_200")
                if len(self.errors) < 20:
                    body = error.read().decode(errors="replace")[:300]
                    self.errors.append(f"{phase} {error.code} {body}")
            except OSError:
                self._count(phase, "socket_errors")


def replica_up(base: str) -> bool:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        body = response.read().decode()
    found = re.search(r"^recsearch_replica_up\{[^}]*\} ([0-9.]+)$", body, re.M)
    return bool(found and float(found.group(1)) == 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/replica_failover.json")
    args = parser.parse_args()
    reason = missing()
    if reason:
        sys.exit(f"cannot make a replica here: {reason}")

    pair = StreamingPair()
    server: Served | None = None
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        data = pair.root / "var"
        env = dict(
            os.environ,
            RECSEARCH_DATA_DIR=str(data),
            RECSEARCH_DATABASE_URL=pair.primary_url,
            RECSEARCH_DATABASE_REPLICA_URL=pair.replica_url,
        )
        cli(env, "ingest", str(CATALOG))
        cli(env, "build")
        server = Served(env, workers=2, threads=4)
        server.wait_ready()
        load = Load(server.base, args.threads)
        load.start()
        for trial in range(1, args.trials + 1):
            load.phase = "up"
            time.sleep(2.0)
            load.phase = "down"
            pair.replica.stop("immediate")
            time.sleep(3.0)
            load.phase = "back"
            restarted = time.monotonic()
            pair.replica.start()
            deadline = restarted + 60
            while not replica_up(server.base) and time.monotonic() < deadline:
                time.sleep(0.1)
            used_again = time.monotonic() - restarted
            time.sleep(2.0)
            counts = load.take()
            row = {"trial": trial, "replica_used_again_after_s": round(used_again, 2), **counts}
            rows.append(row)
            print(json.dumps(row), flush=True)
        load.stop()
        errors = load.errors
    finally:
        if server is not None:
            server.stop()
            log = args.out.with_suffix(".server.log")
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("".join(server.lines))
        pair.stop()

    print(f"\n{'trial':>5} {'phase':6} {'searches':>9} {'non-200':>8} {'socket':>7}  used again")
    for row in rows:
        for phase in ("up", "down", "back"):
            c = row.get(phase, {"searches": 0, "non_200": 0, "socket_errors": 0})
            again = f"{row['replica_used_again_after_s']} s" if phase == "back" else ""
            print(
                f"{row['trial']:>5} {phase:6} {c['searches']:>9} {c['non_200']:>8} "
                f"{c['socket_errors']:>7}  {again}"
            )
    total = {
        k: sum(r.get(p, {}).get(k, 0) for r in rows for p in ("up", "down", "back"))
        for k in ("searches", "non_200", "socket_errors")
    }
    print(f"all trials: {total}")
    for line in errors:
        print(f"  error: {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"total": total, "errors": errors, "trials": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
