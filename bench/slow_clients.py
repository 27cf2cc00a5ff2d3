"""A normal client's searches while slow clients trickle a byte a second: `recsearch serve`
reached directly, and through nginx with deploy/nginx.conf, in one run.

    .venv/bin/python bench/slow_clients.py [--loads 0,8,64] [--trickle-s 30] [--out FILE]

One `recsearch serve` (the production defaults: 2 gthread workers × 4 threads) on the sample
catalog, and Debian's nginx in front of it. For each load (0, 8, 64 slow connections) and each
way in (nginx first, then gunicorn directly), the slow connections open and trickle for
`--trickle-s` seconds (half send their request line and headers a byte a second, half their
body; tests/trickle.py), while one normal client sends searches one after another, each on a
new connection, each with a different text (no cached answer), waiting `--gap-s` between
them. A search that has no answer within `--timeout-s` counts as that long. Prints a table
(p50 / p99 / max ms, how many answered 200) and writes JSON (default
bench/results/slow_clients.json), with every search's time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import nginx_proxy  # noqa: E402
from tests.serving import Served, cli  # noqa: E402
from tests.trickle import Trickle, query_text, search_once  # noqa: E402

CATALOG = ROOT / "data" / "catalog.jsonl"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between ranks, as numpy's default."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def scenario(port: int, load: int, args: argparse.Namespace, first: int) -> dict[str, Any]:
    """Searches against 127.0.0.1:port for trickle_s while `load` slow connections trickle."""
    trickle = Trickle("127.0.0.1", port, load).start() if load else None
    times: list[float] = []
    statuses: list[int] = []
    try:
        time.sleep(2.0)  # every slow connection open and sending
        deadline = time.monotonic() + args.trickle_s
        i = first
        while time.monotonic() < deadline:
            probe = search_once("127.0.0.1", port, query_text(i), timeout_s=args.timeout_s)
            times.append(probe.seconds)
            statuses.append(probe.status)
            i += 1
            time.sleep(args.gap_s)
    finally:
        reopened = trickle.reopened if trickle else 0
        if trickle:
            trickle.stop()
    return {
        "searches": len(times),
        "answered_200": statuses.count(200),
        "p50_ms": round(percentile(times, 50) * 1000, 1),
        "p99_ms": round(percentile(times, 99) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
        "mean_ms": round(statistics.fmean(times) * 1000, 1),
        "slow_reopened": reopened,
        "seconds": [round(t, 4) for t in times],
    }


def settle(port: int) -> None:
    """Until a search answers within 0.5 s again (the slow connections' threads are free)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        probe = search_once("127.0.0.1", port, "settle", timeout_s=5)
        if probe.status == 200 and probe.seconds < 0.5:
            return
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", default="0,8,64", help="slow connections, comma-separated")
    parser.add_argument("--trickle-s", type=float, default=30.0)
    parser.add_argument("--gap-s", type=float, default=0.05, help="between two searches")
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/slow_clients.json")
    args = parser.parse_args()
    why = nginx_proxy.available()
    if why:
        sys.exit(why)
    loads = [int(n) for n in args.loads.split(",")]

    work = Path(tempfile.mkdtemp(prefix="slow-clients-"))
    env = dict(
        os.environ,
        RECSEARCH_DATA_DIR=str(work / "var"),
        RECSEARCH_TRUSTED_PROXIES="127.0.0.1",
        RECSEARCH_OPEN_ENDPOINTS="search",
    )
    cli(env, "ingest", str(CATALOG))
    cli(env, "build")
    server = Served(env, workers=args.workers, threads=args.threads)
    proxy = None
    rows: list[dict[str, Any]] = []
    try:
        server.wait_ready()
        proxy = nginx_proxy.start(work / "nginx", server.port)
        targets = {"nginx": proxy.port, "gunicorn": server.port}
        for port in targets.values():  # warm both ways and every worker
            for i in range(20):
                search_once("127.0.0.1", port, query_text(10_000 + i))
        first = 0
        for load in loads:
            for target, port in targets.items():
                row: dict[str, Any] = {"slow_connections": load, "target": target}
                row |= scenario(port, load, args, first)
                first += row["searches"]
                rows.append(row)
                settle(port)
                print(
                    f"{load:>4} slow -> {target:<8} {row['answered_200']}/{row['searches']} "
                    f"p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms",
                    flush=True,
                )
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        f"{args.trickle_s:g} s of trickle per row; a search with no answer counts {args.timeout_s:g} s"
    )
    print("| slow connections | way in | searches | answered 200 | p50 ms | p99 ms | max ms |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['slow_connections']} | {r['target']} | {r['searches']} | {r['answered_200']} "
            f"| {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        )
    quiet = next((r for r in rows if r["target"] == "nginx" and r["slow_connections"] == 0), None)
    loaded = [r for r in rows if r["target"] == "nginx" and r["slow_connections"] == max(loads)]
    verdict = None
    if quiet and loaded and max(loads) > 0:
        delta = loaded[0]["p99_ms"] - quiet["p99_ms"]
        verdict = {"p99_delta_ms": round(delta, 1), "within_50_ms": delta <= 50}
        print(f"\nnginx, {max(loads)} slow vs quiet: p99 {delta:+.1f} ms (target: within 50 ms)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                "settings": {k: str(v) for k, v in vars(args).items()},
                "verdict": verdict,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
