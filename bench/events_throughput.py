"""Event ingestion throughput and personalized search latency, on SQLite and PostgreSQL.

    .venv/bin/python bench/events_throughput.py [--events 100000] [--api-events 20000]
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]   (--pg '' skips PostgreSQL)
        [--trees BASELINE_DIR,. --rounds 2]   (before/after in one run)

For each database, on a fresh store holding the sample catalog (data/catalog.jsonl):
- `recsearch events FILE` on a generated file of --events events (2,000 users, all types),
  run as the real command in a subprocess (its time includes start-up);
- POST /v1/events in batches of 500 (in-process Flask client);
- GET /v1/search p50/p99 for a user with 1,000 events of history, interleaved per query with
  the same search without a user and with the raw query encoder (the baselines).
Prints a table and writes JSON (default bench/results/events_throughput.json).

With --trees, each listed checkout (say a `git archive` of the commit before a change, and
this one) is measured in its own process with this same script, alternating per round, so
before and after share one run and one machine state; --searches 0 skips the search part.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

# The checkout whose engine is measured: this one, or the one --tree names (read before any
# engine import, which is why those happen inside the functions).
ROOT = Path(__file__).resolve().parents[1]
if "--tree" in sys.argv:
    ROOT = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
sys.path.insert(0, str(ROOT))
CATALOG = ROOT / "data" / "catalog.jsonl"
TYPES = ["impression", "view", "click", "cart", "purchase", "rating"]
QUERIES = [
    "quiet beach with snorkeling",
    "skiing in the alps",
    "cheap street food",
    "wine tasting",
    "ancient temples",
    "desert camel trek",
    "northern lights",
    "family friendly city",
    "romantic island",
    "hiking and lakes",
    "museums and galleries",
    "surfing lessons",
    "safari wildlife",
    "hot springs",
    "colonial architecture",
    "nightlife and bars",
    "volcano hike",
    "diving with sharks",
    "christmas markets",
    "rainforest lodge",
]


def generate_events(path: Path, n: int, item_ids: list[str], users: int, seed: int) -> None:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with open(path, "w") as fh:
        for i in range(n):
            kind = rng.choices(TYPES, [30, 30, 25, 6, 5, 4])[0]
            event: dict[str, object] = {
                "user_id": f"u{rng.randrange(users)}",
                "item_id": rng.choice(item_ids),
                "type": kind,
                "ts": (start + timedelta(seconds=i * 60)).isoformat().replace("+00:00", "Z"),
                "event_id": f"{seed}-{i}",
            }
            if kind == "rating":
                event["value"] = rng.choice([1, 2, 3, 4, 5])
            fh.write(json.dumps(event) + "\n")


def pct(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {
        "p50": round(float(np.percentile(ms, 50)), 3),
        "p99": round(float(np.percentile(ms, 99)), 3),
    }


def fresh_store(
    name: str, base_url: str | None, workdir: Path, seed_indexes: Path | None
) -> tuple[Any, str | None]:
    from engine.core.config import Settings

    data_dir = workdir / name
    if seed_indexes is not None:
        shutil.copytree(seed_indexes, data_dir / "indexes")
    if base_url is None:
        return Settings(data_dir=data_dir, index_poll_s=3600), None
    db = f"recsearch_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}"'))
    admin.dispose()
    url = make_url(base_url).set(database=db).render_as_string(hide_password=False)
    return Settings(data_dir=data_dir, database_url=url, index_poll_s=3600), db


def drop_database(base_url: str, db: str) -> None:
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
    admin.dispose()


def measure(
    name: str,
    base_url: str | None,
    embedder: Any,
    args: Any,
    workdir: Path,
    seed_indexes: Path | None,
) -> tuple[dict[str, Any], Path]:
    from engine.runtime import Runtime
    from indexer.build import build
    from indexer.ingest import ingest

    settings, db = fresh_store(name, base_url, workdir, seed_indexes)
    runtime = Runtime(settings, embedder=embedder)
    with runtime.write_session() as session:
        ingest(runtime, session, CATALOG)
    with runtime.session() as session:
        build(runtime, session)
    item_ids = [json.loads(line)["id"] for line in CATALOG.read_text().splitlines()]
    row: dict[str, Any] = {"database": name}

    if args.events > 0:
        events_file = workdir / f"{name}-events.jsonl"
        generate_events(events_file, args.events, item_ids, users=2000, seed=1)
        env = dict(os.environ, RECSEARCH_DATA_DIR=str(settings.data_dir))
        if settings.database_url:
            env["RECSEARCH_DATABASE_URL"] = settings.database_url
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "web.cli", "-q", "events", str(events_file)],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        cli_s = time.perf_counter() - t
        row["cli_events"] = args.events
        row["cli_seconds"] = round(cli_s, 2)
        row["cli_events_per_s"] = round(args.events / cli_s, 1)

    from web import create_app

    app = create_app(runtime=runtime, loopback=True)
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {app.config['RECSEARCH_API_KEY']}"
    rng = random.Random(2)
    batch = 500
    # In the past (a future ts is refused), after the file's events.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=7)
    t = time.perf_counter()
    for b in range(args.api_events // batch):
        events = [
            {
                "user_id": f"api{rng.randrange(500)}",
                "item_id": rng.choice(item_ids),
                "type": rng.choice(["view", "click", "purchase"]),
                "ts": (start + timedelta(seconds=b * batch + i)).isoformat().replace("+00:00", "Z"),
                "event_id": f"api-{b}-{i}",
            }
            for i in range(batch)
        ]
        response = client.post("/v1/events", json={"events": events})
        assert response.status_code == 200, response.get_json()
    api_s = time.perf_counter() - t
    row["api_events"] = args.api_events
    row["api_events_per_s"] = round(args.api_events / api_s, 1)

    if args.searches > 0:
        heavy = [
            {
                "user_id": "heavy",
                "item_id": rng.choice(item_ids),
                "type": rng.choice(["view", "click", "cart", "purchase"]),
                "ts": (start - timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
            }
            for i in range(1000)
        ]
        for i in range(0, 1000, 500):
            assert client.post("/v1/events", json={"events": heavy[i : i + 500]}).status_code == 200
        assert client.get("/v1/users/heavy").get_json()["event_count"] == 1000
        enc, anon, personal = [], [], []
        for n in range(args.searches):
            q = f"{QUERIES[n % len(QUERIES)]} {n}"  # distinct texts: the query cache never hits
            t = time.perf_counter()
            embedder.encode_query(q)
            enc.append(time.perf_counter() - t)
            embedder.clear_cache()
            t = time.perf_counter()
            assert client.get("/v1/search", query_string={"q": q, "k": 10}).status_code == 200
            anon.append(time.perf_counter() - t)
            embedder.clear_cache()
            t = time.perf_counter()
            response = client.get("/v1/search", query_string={"q": q, "k": 10, "user_id": "heavy"})
            personal.append(time.perf_counter() - t)
            assert response.status_code == 200 and len(response.get_json()["results"]) == 10
        row["encoder_ms"] = pct(enc)
        row["search_anonymous_ms"] = pct(anon)
        row["search_user_1000_events_ms"] = pct(personal)
    runtime.close()
    if db and base_url:
        drop_database(base_url, db)
    return row, settings.index_dir


def measure_tree(args: Any) -> list[dict[str, Any]]:
    """Both databases, measured with the engine of ROOT (this checkout or --tree's)."""
    from engine.core.config import Settings
    from engine.encoder.embedder import Embedder

    embedder = Embedder(Settings())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print(f"sqlite ({ROOT}) ...", file=sys.stderr)
        row, seed = measure("sqlite", None, embedder, args, workdir, None)
        rows.append(row)
        if args.pg:
            print(f"postgresql ({ROOT}) ...", file=sys.stderr)
            rows.append(measure("postgresql", args.pg, embedder, args, workdir, seed)[0])
    for row in rows:
        row["tree"] = str(ROOT)
    return rows


def measure_trees(args: Any) -> list[dict[str, Any]]:
    """Each tree in its own process (one engine per interpreter), alternating per round."""
    rows: list[dict[str, Any]] = []
    forwarded = [
        f"--events={args.events}",
        f"--api-events={args.api_events}",
        f"--searches={args.searches}",
        f"--pg={args.pg}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            for n, tree in enumerate(args.trees.split(",")):
                out = Path(tmp) / f"{round_no}-{n}.json"
                command = [sys.executable, __file__, "--tree", tree, "--out", str(out)]
                subprocess.run(command + forwarded, check=True, stdout=subprocess.DEVNULL)
                for row in json.loads(out.read_text())["rows"]:
                    rows.append({**row, "round": round_no})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000, help="0 skips `recsearch events`")
    parser.add_argument("--api-events", type=int, default=20_000)
    parser.add_argument("--searches", type=int, default=200, help="0 skips the search part")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--tree", type=Path, help="measure the engine of this checkout")
    parser.add_argument("--trees", default="", help="checkouts to compare, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="with --trees")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1]
        / "bench"
        / "results"
        / "events_throughput.json",
    )
    args = parser.parse_args()
    rows = measure_trees(args) if args.trees else measure_tree(args)
    print()
    print(
        f"{'database':>10} | {'recsearch events':>22} | {'POST /v1/events':>16} | "
        f"{'search anon p50/p99':>20} | {'search user(1k ev) p50/p99':>26} | tree"
    )
    for r in rows:
        cli = (
            f"{r['cli_events']:>7} in {r['cli_seconds']:>5.1f}s {r['cli_events_per_s']:>6.0f}/s"
            if "cli_events" in r
            else "-"
        )
        search = user = "-"
        if "search_anonymous_ms" in r:
            a, u = r["search_anonymous_ms"], r["search_user_1000_events_ms"]
            search = f"{a['p50']:>9.2f} {a['p99']:>9.2f}"
            user = f"{u['p50']:>12.2f} {u['p99']:>12.2f}"
        print(
            f"{r['database']:>10} | {cli:>22} | {r['api_events_per_s']:>14.0f}/s | "
            f"{search:>20} | {user:>26} | {r['tree']}"
        )
    result = {"benchmark": "events_throughput", "events": args.events, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
