"""How long re-encoding users' taste vectors takes after an encoder switch (engine.users.taste),
against recording the same events in the same run, on SQLite and PostgreSQL.

    .venv/bin/python bench/taste_reencode.py [--events 100000] [--users 2000]
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]   (--pg '' skips PostgreSQL)

For each database, on a fresh store holding the sample catalog (data/catalog.jsonl) built once:
- the baseline: a generated log of --events events over --users users (all types) recorded
  through indexer.events.load_events, as `recsearch events` does;
- then every row is marked as lying in another encoder's space and reencode_stale sums every
  taste again from the log, as the elected server does after a switch (a batch of users per
  transaction); the result is checked against what recording left (the same space here, so
  the vectors must agree to rounding).
Prints a table and writes JSON (default bench/results/taste_reencode.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from events_throughput import (  # noqa: E402
    CATALOG,
    drop_database,
    fresh_store,
    generate_events,
)


def tastes(runtime: Any) -> dict[str, np.ndarray]:
    from sqlalchemy import select

    from engine.store.models import UserFeatures

    with runtime.session() as session:
        rows = session.execute(select(UserFeatures.user_id, UserFeatures.vector)).all()
    return {r.user_id: np.frombuffer(r.vector, dtype=np.float64) for r in rows if r.vector}


def measure(name: str, base_url: str | None, embedder: Any, args: Any, workdir: Path) -> dict:
    from sqlalchemy import update

    from engine.runtime import Runtime
    from engine.store.models import UserFeatures
    from engine.users.taste import reencode_stale
    from indexer.build import build
    from indexer.events import load_events
    from indexer.ingest import ingest

    settings, db = fresh_store(name, base_url, workdir, None)
    runtime = Runtime(settings, embedder=embedder)
    try:
        with runtime.write_session() as session:
            ingest(runtime, session, CATALOG)
        with runtime.session() as session:
            build(runtime, session)
        space = runtime.live.get().model_name
        item_ids = [json.loads(line)["id"] for line in CATALOG.read_text().splitlines()]
        path = workdir / f"{name}-events.jsonl"
        generate_events(path, args.events, item_ids, users=args.users, seed=1)

        t = time.perf_counter()
        with runtime.write_session() as session:
            load_events(runtime, session, path)
        record_s = time.perf_counter() - t
        recorded = tastes(runtime)

        with runtime.write_session() as session:
            session.execute(update(UserFeatures).values(vector_encoder="previous-encoder"))
        t = time.perf_counter()
        users = reencode_stale(runtime.sessions, runtime.settings, runtime.vectors, space)
        reencode_s = time.perf_counter() - t
        again = tastes(runtime)
        worst = max(
            float(np.abs(again[u] - v).max() / max(np.abs(v).max(), 1e-12))
            for u, v in recorded.items()
        )
        assert users == len(recorded) and worst < 1e-9, (users, len(recorded), worst)
        return {
            "database": name,
            "events": args.events,
            "users": users,
            "record_s": round(record_s, 2),
            "record_events_per_s": round(args.events / record_s, 1),
            "reencode_s": round(reencode_s, 2),
            "reencode_users_per_s": round(users / reencode_s, 1),
            "reencode_events_per_s": round(args.events / reencode_s, 1),
            "worst_relative_difference": worst,
        }
    finally:
        runtime.close()
        if db is not None and base_url is not None:
            drop_database(base_url, db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/taste_reencode.json")
    args = parser.parse_args()

    from engine.core.config import Settings
    from engine.encoder.embedder import Embedder

    embedder = Embedder(Settings())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, url in [("sqlite", None), ("postgresql", args.pg or None)]:
            if name == "postgresql" and url is None:
                continue
            rows.append(measure(name, url, embedder, args, Path(tmp)))

    print(
        f"\n{'database':<11} {'events':>8} {'users':>6} {'record s':>9} {'events/s':>9} "
        f"{'re-encode s':>12} {'users/s':>8} {'events/s':>9} {'worst diff':>11}"
    )
    for r in rows:
        print(
            f"{r['database']:<11} {r['events']:>8} {r['users']:>6} {r['record_s']:>9} "
            f"{r['record_events_per_s']:>9} {r['reencode_s']:>12} "
            f"{r['reencode_users_per_s']:>8} {r['reencode_events_per_s']:>9} "
            f"{r['worst_relative_difference']:>11.1e}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": platform.node(), "cpus": _cpus(), "rows": rows}, indent=2) + "\n"
    )
    print(f"\nwrote {args.out}")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
