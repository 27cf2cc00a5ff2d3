"""Impression logging beside searches: what a flush of the impression log costs the other
threads of its process.

    .venv/bin/python bench/impression_log.py [--searches 100] [--rounds 8]
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]

Every search logs the items it showed with their features (engine.users.impressions); a thread
writes them every 0.5 s, and while that thread holds the GIL the searches of its process
wait. Per round, on a fresh SQLite store (and PostgreSQL with --pg), in alternating order:
- ImpressionLog.flush of what --searches searches logged (10 items each, with the served
  feature names): alone (wall and CPU ms), then beside a thread that runs Python without a
  pause, as a search does as far as the GIL goes: the flush's wall ms and the ms that
  thread lost (the sum of its loop's gaps over 50 µs);
- the baseline (SQLite): the same rows as one executemany of per-row tuples, SQLite's
  insert before: the driver binds each row holding the GIL and takes the GIL back after
  each row's step, so a busy thread must hand it over once per row.
Prints a table and writes JSON (default bench/results/impression_log.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.events_throughput import drop_database, fresh_store  # noqa: E402
from engine.core.clock import utcnow  # noqa: E402
from engine.core.config import Settings  # noqa: E402
from engine.ranking.feature_names import feature_names  # noqa: E402
from engine.store import sql_bulk  # noqa: E402
from engine.store.db import make_engine, session_factory, upgrade  # noqa: E402
from engine.users.impressions import COLUMNS, ImpressionLog, Shown, _rows  # noqa: E402
from web.server import SWITCH_INTERVAL_S  # noqa: E402

BUSY_GAP_S = 50e-6  # a longer pause in the busy loop is time it waited for the GIL


def shown(settings: Settings, n: int, rng: np.random.Generator) -> list[Shown]:
    names = feature_names(settings.attribute_features())
    return [
        Shown(
            request_id=uuid.uuid4().hex,
            user_id=f"user-{i % 50}",
            item_ids=[f"item-{j}" for j in rng.choice(100_000, 10, replace=False)],
            names=names,
            features=rng.standard_normal((10, len(names))),
            model_version="bench",
            index_version="bench",
            ts=utcnow(),
        )
        for i in range(n)
    ]


def beside_busy_thread(write: Callable[[], object]) -> tuple[float, float]:
    """(the write's wall ms, the ms a thread running Python beside it lost)."""
    done = threading.Event()
    writer = threading.Thread(target=lambda: (write(), done.set()))
    lost = 0.0
    last = start = time.perf_counter()
    writer.start()
    while not done.is_set():
        now = time.perf_counter()
        if now - last > BUSY_GAP_S:
            lost += now - last
        last = now
    writer.join()
    return (last - start) * 1e3, lost * 1e3


def measure(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    engine = make_engine(settings)
    upgrade(engine)
    sessions = session_factory(engine)
    log = ImpressionLog(sessions, retention_days=30, interval_s=3600)  # flushed here only
    rng = np.random.default_rng(0)
    sqlite = engine.dialect.name == "sqlite"

    def served() -> int:
        return log.flush()

    def executemany() -> int:
        """The baseline: the rows as tuples, bound and stepped one by one by the driver."""
        queued = []
        while not log._queue.empty():
            queued.append(log._queue.get_nowait())
        with sessions() as session, session.begin():
            rows = _rows(queued, sql_bulk.timestamp_text(session))
            cursor = session.connection().connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.executemany(
                f"INSERT INTO impressions ({', '.join(COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in COLUMNS)})",
                rows,
            )
        return len(rows)

    ways = {"served": served} | ({"executemany": executemany} if sqlite else {})
    samples: dict[str, list[float]] = {}
    for r in range(args.rounds):
        order = list(ways.items())
        for name, write in order if r % 2 else reversed(order):
            for s in shown(settings, args.searches, rng):
                log.log(s)
            t, cpu = time.perf_counter(), time.thread_time()
            rows = write()
            samples.setdefault(f"{name}_alone_ms", []).append((time.perf_counter() - t) * 1e3)
            samples.setdefault(f"{name}_alone_cpu_ms", []).append((time.thread_time() - cpu) * 1e3)
            assert rows == args.searches * 10, rows
            for s in shown(settings, args.searches, rng):
                log.log(s)
            wall, lost = beside_busy_thread(write)
            samples.setdefault(f"{name}_beside_ms", []).append(wall)
            samples.setdefault(f"{name}_lost_ms", []).append(lost)
    log.close()
    engine.dispose()
    return {
        "database": engine.dialect.name,
        "rows_per_flush": args.searches * 10,
        "median_ms": {k: round(float(np.median(v)), 2) for k, v in samples.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--searches", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--pg", default="", help="a PostgreSQL URL to measure as well")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "impression_log.json"
    )
    args = parser.parse_args()
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as a `recsearch serve` worker runs
    results: dict[str, Any] = {
        "benchmark": "impression_log",
        "machine": {"host": platform.node(), "python": platform.python_version()},
        "searches_per_flush": args.searches,
        "rounds": args.rounds,
        "switch_interval_s": SWITCH_INTERVAL_S,
        "databases": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["databases"].append(measure(Settings(data_dir=Path(tmp) / "sqlite"), args))
        if args.pg:  # a database of its own, dropped after
            settings, db = fresh_store("postgresql", args.pg, Path(tmp), None)
            try:
                results["databases"].append(measure(settings, args))
            finally:
                assert db is not None
                drop_database(args.pg, db)
    print(
        f"\nA flush of {args.searches} searches' impressions ({args.searches * 10} rows); "
        f"medians of {args.rounds} rounds, ms"
    )
    header = (
        f"{'database':>10} {'write':>12} | {'alone':>7} {'cpu':>7} | "
        f"{'beside a busy thread':>20} {'it lost':>8}"
    )
    print(header)
    print("-" * len(header))
    for db in results["databases"]:
        ms = db["median_ms"]
        for name in ("executemany", "served"):
            if f"{name}_alone_ms" in ms:
                print(
                    f"{db['database']:>10} {name:>12} | {ms[f'{name}_alone_ms']:7.1f} "
                    f"{ms[f'{name}_alone_cpu_ms']:7.1f} | {ms[f'{name}_beside_ms']:20.1f} "
                    f"{ms[f'{name}_lost_ms']:8.1f}"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
