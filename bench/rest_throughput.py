"""REST throughput of `recsearch serve` on BEIR SciFact, measured with wrk.

    .venv/bin/python bench/rest_throughput.py [--duration 20] [--connections 1,4]
        [--variants serve:onnx,serve:torch,dev:onnx] [--workers 2] [--rounds 1]

A variant is server:encoder[:threads]; threads sets RECSEARCH_ENCODER_THREADS for it (by
default each `serve` worker's ONNX encoder and the dev server take every core, a `serve`
worker's torch encoder cores // workers: web.server.encoder_threads).

Setup (once, kept in --workdir): SciFact's 5,183 abstracts imported and built with the default
encoder. Then, for each round, each variant in turn (interleaved, so drift on a shared machine
hits all alike): start the server (`serve` = gunicorn workers, `dev` = Flask's server) with
RECSEARCH_ENCODER set to the variant's encoder, warm it, and run `wrk` at each connection
count over SciFact's 1,109 unique queries, each wrk thread starting at another offset and each
request's text made unique by a request number after the query (several workers each with a
1,024-entry cache would otherwise serve repeats from it). Reports requests/s, p50/p99 and errors; prints a table
and writes JSON (default bench/results/rest_throughput.json). Needs Debian's `wrk`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "beir-scifact"
RECSEARCH = [sys.executable, "-m", "web.cli"]
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(workdir: Path, data: Path) -> dict[str, str]:
    env = dict(os.environ, RECSEARCH_DATA_DIR=str(workdir / "var"))
    if not (workdir / "var" / "indexes" / "CURRENT").exists():
        print(f"importing and building {data} into {workdir} (once; minutes)", flush=True)
        for args in (["import", "beir", str(data)], ["build"]):
            subprocess.run([*RECSEARCH, "-q", *args], env=env, cwd=ROOT, check=True)
    return env


def lua_script(data: Path, path: Path) -> int:
    queries = [json.loads(line)["text"] for line in (data / "queries.jsonl").open()]
    unique = list(dict.fromkeys(queries))
    paths = [f"/v1/search?k=10&q={urllib.parse.quote_plus(q)}" for q in unique]
    lines = ",\n".join(json.dumps(p) for p in paths)
    path.write_text(
        f"local paths = {{\n{lines}\n}}\n"
        "local counter = 0\n"
        "function setup(thread) thread:set('id', counter); counter = counter + 1 end\n"
        "function init(args) i = (tonumber(id) or 0) * 277; n = 0; tid = tonumber(id) or 0 end\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        "  n = n + 1\n"
        # A request number after the query makes every text new to every worker's cache.
        "  return wrk.format('GET', paths[i] .. '+' .. tid .. 'x' .. n)\n"
        "end\n"
    )
    return len(unique)


def start(
    env: dict[str, str], kind: str, encoder: str, workers: int, port: int, threads: str = ""
) -> Any:
    args = ["serve", "--port", str(port)]
    args += ["--dev"] if kind == "dev" else ["--workers", str(workers)]
    server_env = dict(env, RECSEARCH_ENCODER=encoder)
    if threads:
        server_env["RECSEARCH_ENCODER_THREADS"] = threads
    server = subprocess.Popen(
        [*RECSEARCH, *args],
        env=server_env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(server, f"{base}/readyz", f"{kind}:{encoder}")
    for n in range(20):  # warm every worker's encoder and index
        q = urllib.parse.quote_plus(f"warm up query {n}")
        urllib.request.urlopen(f"{base}/v1/search?q={q}", timeout=30).read()
    return server


def wait_ready(server: Any, url: str, name: str, timeout_s: float = 300) -> None:
    """Poll url until it answers 200; raise if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.5)


def stop(server: Any) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def wrk(base: str, script: Path, connections: int, duration_s: int) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", f"-t{connections}", f"-c{connections}", f"-d{duration_s}s", "--latency"]
        + ["-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {"connections": connections, **parse_wrk(out)}


def parse_wrk(out: str) -> dict[str, Any]:
    """requests, requests/s, p50/p99 (ms), non-2xx responses and socket errors from wrk's
    --latency report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {
        p: float(v) * _UNITS[u]
        for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)", out, re.M)
    }
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "requests": int(total.group(1)) if total else 0,
        "rps": rps,
        "p50_ms": latency.get("50"),
        "p99_ms": latency.get("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rs-rest")
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", default="1,4")
    parser.add_argument("--variants", default="serve:onnx,serve:torch,dev:onnx")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "rest_throughput.json"
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data} is missing: this benchmark reads BEIR SciFact from shared/data")
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = prepare(args.workdir, args.data)
    script = args.workdir / "queries.lua"
    n_queries = lua_script(args.data, script)
    connections = [int(c) for c in args.connections.split(",")]
    variants = [(*v.split(":"), "")[:3] for v in args.variants.split(",")]
    rows: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        for kind, encoder, threads in variants:
            port = free_port()
            server = start(env, kind, encoder, args.workers, port, threads)
            try:
                for c in connections:
                    row = wrk(f"http://127.0.0.1:{port}", script, c, args.duration)
                    row.update(server=kind, encoder=encoder, round=round_no)
                    if threads:
                        row["encoder_threads"] = int(threads)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                stop(server)
    print(
        f"\nSciFact, {n_queries} unique queries, {args.duration} s per run, {os.cpu_count()} cores"
    )
    print(
        f"{'server':<8} {'encoder':<10} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"
    )
    for r in rows:
        print(
            f"{r['server']:<8} {_encoder(r):<10} {r['connections']:>5} {r['rps']:>8.1f} "
            f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['non_2xx'] + r['socket_errors']:>7}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"queries": n_queries, "workers": args.workers, "rows": rows}, indent=1)
    )
    print(f"wrote {args.out}")


def _encoder(row: dict[str, Any]) -> str:
    threads = row.get("encoder_threads")
    return f"{row['encoder']}:{threads}" if threads else str(row["encoder"])


if __name__ == "__main__":
    main()
