"""Mixed load on `recsearch serve` (gunicorn workers) vs the dev server vs txtai, on SciFact.

    .venv/bin/python bench/serve_load.py [--duration 20] [--connections 1,4,16]
        [--targets serve-pg,serve-sqlite,dev-sqlite,txtai,fleet-pg,serve-sqlite-int8q]
        [--workers 2] [--rounds 1]
        [--rebuild admin|cli|none] [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--cached] [--ceiling-s 10]

Every search text is unique by default (a request number after the query), so no query
cache answers; --cached adds the search load with the texts repeated, in rows of its own
("cached"), never mixed with the unique ones. The verdict line compares unique-text rows
with txtai at 4 and 16 connections against issue 28's goal (>= 5x its requests/s, p99 <=
a quarter of its p99). After each round the query encoder alone is timed for --ceiling-s
(bench/encoder_ceiling.py: --workers processes, one thread each, unique claims, no HTTP and
no search) at each precision the recsearch targets run, and set beside txtai's requests/s of
that round: the most any server at that precision could serve on this machine.

Setup (once, kept in --workdir): BEIR SciFact's 5,183 abstracts imported and built into a
SQLite store and a PostgreSQL store (the second build reuses the first one's vectors), and
--users users seeded with click histories. SciFact is read from shared/data, never copied.

Each round runs every target in turn (interleaved, so drift on a shared machine hits all
alike): start it, warm it, then `wrk` at each connection count on two workloads:
- mix: a prepared request file cycled by a Lua script — anonymous searches, searches with a
  seeded user, and POST /v1/events batches (--mix weights) — over SciFact's 1,109 unique
  queries, each search text made unique by a request number after the query (every worker
  has a query cache) and each event_id unique per run;
- search: anonymous searches only, the workload the txtai peer also runs
  (GET /search?query=...&limit=10 on txtai.api, same queries, same model, exact index).
During the mix at --rebuild-connections, a rebuild starts half-way through the cell (the
admin API's POST /admin/api/rebuild, or `recsearch build` in another process) and the cell
reports whether it finished inside the load. Every cell counts non-2xx responses and
socket errors (both must be 0), and records the RSS of the server's processes (gunicorn's
master and each worker, read from /proc/<pid>/status) at the end of the cell. After a
rebuild, every server is searched until it answers with the version the rebuild published.

fleet-pg: two `recsearch serve` processes on ports of their own, sharing serve-pg's data dir
(the FAISS index versions) and PostgreSQL database, each with max(1, --workers // 2) gunicorn
workers, so the fleet has the single server's workers in all (at --workers 2: 2 servers x 1
worker against 1 server x 2 workers). Each sizes its thread pools from its own workers as
`recsearch serve` does (web/server.py): the ONNX encoder gets every core in both cases, while
the pools that spin (OpenMP, BLAS; torch's when RECSEARCH_ENCODER=torch) get cores // 1
against cores // 2 in the single server, except where the encoder's threads are those pools'
(torch, or RECSEARCH_ENCODER_THREADS set): then they are pinned to the single server's share,
so workers x threads <= cores over the fleet. Each row records the budget it ran with. A
cell runs one wrk per server at the same time, with the same Lua mix: the first gets
ceil(c / 2) connections, the second floor(c / 2) (at 1 connection only the first server has
load), and the second numbers its threads after the first's, so search texts and event_ids
stay unique across both. Requests/s, requests, non-2xx and socket errors are summed; p50 and
p99 come from the two wrk's latency histograms merged (every distinct latency in µs with its
count, printed by the script's done()), by wrk's own percentile rule, so they are the fleet's
percentiles, not the worse of two; each server's own numbers are kept under "servers". RSS is
the sum over both servers' processes. The rebuild starts on the first server (--rebuild
admin posts to it), and the cell reports the version each server searches with afterwards.

serve-sqlite-int8q: serve-sqlite with RECSEARCH_QUERY_ENCODER=onnx-int8 (queries through the
int8 export, over the same index of fp32 item vectors).

The txtai target needs bench/txtai_peer.sh's venv and index (outside the repo; minutes:
`bench/txtai_peer.sh index`); it is skipped with a note when they are missing.
Prints a table and writes JSON (default bench/results/serve_load.json). Needs Debian's `wrk`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import encoder_ceiling  # noqa: E402
from rest_throughput import free_port, parse_wrk, stop, wait_ready  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "beir-scifact"
RECSEARCH = [sys.executable, "-m", "web.cli"]
TXTAI_PEER = ROOT / "bench" / "txtai_peer.sh"
TXTAI_INDEX = Path(os.environ.get("TXTAI_INDEX", "/work/txtai-scifact"))
API_KEY = "serve-load-bench-key-0123456789abcdef"
KINDS = ("anon", "user", "events")


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # serve | dev | txtai | fleet (two serve processes on one store)
    store: str | None  # sqlite | postgresql (None for txtai)
    env: tuple[tuple[str, str], ...] = ()  # settings of its own, over its store's


TARGETS = {
    "serve-pg": Target("serve-pg", "serve", "postgresql"),
    "serve-sqlite": Target("serve-sqlite", "serve", "sqlite"),
    "dev-sqlite": Target("dev-sqlite", "dev", "sqlite"),
    "dev-pg": Target("dev-pg", "dev", "postgresql"),
    # Queries through the int8 export, over the same fp32 index as serve-sqlite.
    "serve-sqlite-int8q": Target(
        "serve-sqlite-int8q", "serve", "sqlite", (("RECSEARCH_QUERY_ENCODER", "onnx-int8"),)
    ),
    "txtai": Target("txtai", "txtai", None),
    "fleet-pg": Target("fleet-pg", "fleet", "postgresql"),
}
FLEET_SERVERS = 2


# --- stores -----------------------------------------------------------------------------


def recsearch(env: dict[str, str], *args: str) -> None:
    subprocess.run([*RECSEARCH, "-q", *args], env=env, cwd=ROOT, check=True)


def prepare_stores(workdir: Path, data: Path, pg: str, stores: set[str]) -> dict[str, Any]:
    """An imported and built SciFact per store kind; returns each store's environment."""
    base = dict(os.environ, RECSEARCH_API_KEY=API_KEY)
    base.pop("RECSEARCH_DATABASE_URL", None)
    envs: dict[str, dict[str, str]] = {}
    sqlite_var = workdir / "sqlite" / "var"
    envs["sqlite"] = dict(base, RECSEARCH_DATA_DIR=str(sqlite_var))
    if not (sqlite_var / "indexes" / "CURRENT").exists():
        print(f"importing and building {data} on SQLite (once; minutes)", flush=True)
        recsearch(envs["sqlite"], "import", "beir", str(data))
        recsearch(envs["sqlite"], "build")
    if "postgresql" in stores:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        pg_var = workdir / "postgresql" / "var"
        # One database per workdir: two runs with their own workdirs never share one.
        database = "recsearch_serve_load_" + hashlib.sha256(str(workdir).encode()).hexdigest()[:8]
        url = make_url(pg).set(database=database)
        envs["postgresql"] = dict(
            base,
            RECSEARCH_DATA_DIR=str(pg_var),
            RECSEARCH_DATABASE_URL=url.render_as_string(hide_password=False),
        )
        ready = (pg_var / "indexes" / "CURRENT").exists()
        admin = create_engine(pg, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
            )
            if exists and not ready:
                conn.execute(text(f'DROP DATABASE "{database}" WITH (FORCE)'))
            if not exists or not ready:
                conn.execute(text(f'CREATE DATABASE "{database}"'))
        admin.dispose()
        if not exists or not ready:  # a store is its database and its folder, made together
            print("importing and building on PostgreSQL (reusing SQLite's vectors)", flush=True)
            shutil.rmtree(pg_var, ignore_errors=True)
            pg_var.mkdir(parents=True)
            os.chmod(pg_var, 0o700)
            shutil.copytree(sqlite_var / "indexes", pg_var / "indexes")
            recsearch(envs["postgresql"], "import", "beir", str(data))
            recsearch(envs["postgresql"], "build")
    return envs


def seed_users(env: dict[str, str], workdir: Path, doc_ids: list[str], users: int) -> None:
    """Click histories for load-u0.. through `recsearch events` (fixed event_ids: seeding
    again records nothing; no ts, so they happen now and never lie in the future)."""
    rng = random.Random(7)
    path = workdir / "seed-events.jsonl"
    with path.open("w") as f:
        for u in range(users):
            for k in range(20):
                event = {
                    "user_id": f"load-u{u}",
                    "item_id": rng.choice(doc_ids),
                    "type": rng.choice(["view", "click", "click", "purchase"]),
                    "event_id": f"seed-{u}-{k}",
                }
                f.write(json.dumps(event) + "\n")
    recsearch(env, "events", str(path))


# --- requests ---------------------------------------------------------------------------


def post(base: str, path: str, body: Any, timeout_s: float = 60) -> Any:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def get(base: str, path: str, timeout_s: float = 60) -> Any:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def requests_for(
    workload: str,
    queries: list[str],
    doc_ids: list[str],
    users: int,
    mix: dict[str, int],
    txtai: bool,
    events_per_post: int = 5,
    seed: int = 3,
) -> list[dict[str, Any]]:
    """The request file a Lua script cycles through: {kind, method, path, body}. Searches
    end with the query, so the script can append a request number to it; an event's id is
    `@-j`, where the script puts run, thread and request number in place of `@`."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    n = len(queries) * (2 if workload == "mix" else 1)
    for i in range(n):
        q = urllib.parse.quote_plus(queries[i % len(queries)])
        kind = "anon"
        if workload == "mix":
            kind = rng.choices(list(mix), list(mix.values()))[0]
        if txtai:
            out.append({"kind": "anon", "method": "GET", "path": f"/search?limit=10&query={q}"})
        elif kind == "anon":
            out.append({"kind": kind, "method": "GET", "path": f"/v1/search?k=10&q={q}"})
        elif kind == "user":
            user = f"load-u{rng.randrange(users)}"
            path = f"/v1/search?k=10&user_id={user}&q={q}"
            out.append({"kind": kind, "method": "GET", "path": path})
        else:
            user = f"load-u{rng.randrange(users)}"
            events = [
                {
                    "user_id": user,
                    "item_id": rng.choice(doc_ids),
                    "type": rng.choice(["view", "click", "click", "cart", "purchase"]),
                    "event_id": f"@-{j}",
                }
                for j in range(events_per_post)
            ]
            body = json.dumps({"events": events})
            out.append({"kind": kind, "method": "POST", "path": "/v1/events", "body": body})
    return out


def lua_script(
    path: Path, requests: list[dict[str, Any]], run_id: str, unique: bool = True
) -> Path:
    """A wrk script cycling through the requests, one connection per thread, counting
    responses and non-2xx by kind (printed as one RESULT line by done()), and printing the
    latency histogram (a LATENCY line of µs:count pairs) so two wrk runs can be merged. A
    script argument (`wrk ... -- N`) numbers the threads from N: two wrk at once then send
    disjoint request numbers and event_ids."""
    kinds = {k: i + 1 for i, k in enumerate(KINDS)}
    rows = ",\n".join(
        f"{{{kinds[r['kind']]}, {_lua_str(r['method'])}, {_lua_str(r['path'])}, "
        f"{_lua_str(r.get('body', ''))}}}"
        for r in requests
    )
    path.write_text(
        f"local reqs = {{\n{rows}\n}}\n"
        f'local run = "{run_id}"\n'
        'local auth = "Bearer ' + API_KEY + '"\n'
        "local threads = {}\n"
        "function setup(thread)\n"
        "  thread:set('id', #threads)\n"
        "  table.insert(threads, thread)\n"
        "end\n"
        "function init(args)\n"
        "  tid = (tonumber(id) or 0) + (tonumber(args[1]) or 0)\n"
        "  i = (tid * 277) % #reqs\n"
        "  n = 0\n"
        "  last = 1\n"
        "  done_by = {0, 0, 0}\n"
        "  bad_by = {0, 0, 0}\n"
        "end\n"
        "request = function()\n"
        "  i = i % #reqs + 1\n"
        "  n = n + 1\n"
        "  local r = reqs[i]\n"
        "  last = r[1]\n"
        "  local headers = {Authorization = auth}\n"
        "  if r[2] == 'POST' then\n"
        "    headers['Content-Type'] = 'application/json'\n"
        "    local body = r[4]:gsub('@', run .. '-' .. tid .. '-' .. n)\n"
        "    return wrk.format('POST', r[3], headers, body)\n"
        "  end\n"
        # A request number after the query makes every text new to every worker's cache
        # (the "cached" workload cycles the texts as they are: repeats the cache answers).
        + (
            "  return wrk.format('GET', r[3] .. '+' .. tid .. 'x' .. n, headers)\n"
            if unique
            else "  return wrk.format('GET', r[3], headers)\n"
        )
        + "end\n"
        "response = function(status, headers, body)\n"
        "  done_by[last] = done_by[last] + 1\n"
        "  if status < 200 or status > 299 then bad_by[last] = bad_by[last] + 1 end\n"
        "end\n"
        "function done(summary, latency, requests)\n"
        "  local d, b = {0, 0, 0}, {0, 0, 0}\n"
        "  for _, t in ipairs(threads) do\n"
        "    local td, tb = t:get('done_by'), t:get('bad_by')\n"
        "    for k = 1, 3 do d[k] = d[k] + td[k]; b[k] = b[k] + tb[k] end\n"
        "  end\n"
        "  io.write(string.format('RESULT %d %d %d %d %d %d\\n', d[1], d[2], d[3], b[1], b[2], b[3]))\n"
        # Every distinct latency with its count: latency(k) is the k-th one, #latency their
        # number (wrk's stats object), a few thousand pairs in a 20 s cell.
        "  local h = {}\n"
        "  for k = 1, #latency do\n"
        "    local v, c = latency(k)\n"
        "    h[#h + 1] = string.format('%d:%d', v, c)\n"
        "  end\n"
        "  io.write('LATENCY ' .. table.concat(h, ' ') .. '\\n')\n"
        "end\n"
    )
    return path


def _lua_str(value: str) -> str:
    # Lua long brackets need no escaping; the level guards against ']]' in the text.
    level = "=" * 3
    assert f"]{level}]" not in value
    return f"[{level}[{value}]{level}]"


# --- servers ----------------------------------------------------------------------------


def start(
    target: Target,
    env: dict[str, str] | None,
    port: int,
    workers: int,
    threads: int,
    name: str | None = None,
) -> Any:
    name = name or target.name
    log = Path(tempfile.gettempdir()) / f"serve_load-{name}.log"
    if target.kind == "txtai":
        server = subprocess.Popen(
            ["bash", str(TXTAI_PEER), "serve", str(port)],
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        wait_ready(server, f"http://127.0.0.1:{port}/search?query=warm&limit=1", name)
        return server
    assert env is not None
    args = ["serve", "--port", str(port)]
    if target.kind == "dev":
        args.append("--dev")
    else:
        args += ["--workers", str(workers), "--threads", str(threads)]
    server = subprocess.Popen(
        [*RECSEARCH, *args], env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    wait_ready(server, f"http://127.0.0.1:{port}/readyz", name)
    return server


def thread_budget(env: dict[str, str], workers: int, fleet_workers: int) -> dict[str, Any]:
    """What each worker of a server with `workers` workers gets from `recsearch serve` (its
    encoder's threads and the spinning pools'), and the RECSEARCH_ENCODER_THREADS a fleet
    server with `fleet_workers` needs ("" for none) to keep the single server's budget."""
    from engine.core.config import Settings
    from web.server import encoder_threads, pool_threads

    settings = Settings.from_env(env)
    single = {
        "encoder": encoder_threads(settings, workers),
        "pools": pool_threads(settings, workers),
    }
    pin = ""
    if settings.encoder == "torch" or settings.encoder_threads:  # one number sizes both
        pin = str(single["pools"])
        settings = settings.replace(encoder_threads=single["pools"])
    fleet = {
        "encoder": encoder_threads(settings, fleet_workers),
        "pools": pool_threads(settings, fleet_workers),
    }
    return {"single": single, "fleet": fleet, "pin": pin}


def warm(base: str, target: Target, n: int = 20) -> None:
    """Load every worker's encoder and index (requests spread over the workers)."""
    for k in range(n):
        q = urllib.parse.quote_plus(f"warm up query {k}")
        path = f"/search?limit=10&query={q}" if target.kind == "txtai" else f"/v1/search?q={q}"
        get(base, path)


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return round(int(match.group(1)) / 1024, 1) if match else None


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(out))


def memory(servers: list[Any], target: Target) -> dict[str, Any]:
    """RSS of the server process and, under gunicorn, of each worker (its children); for a
    fleet, summed over its servers (masters added up, workers listed), each kept under
    "servers"; total_mb adds up every process."""
    if target.kind in ("txtai", "dev"):  # one process (bash exec'd uvicorn: the same pid)
        process = rss_mb(servers[0].pid)
        return {"process_mb": process, "total_mb": process}
    parts: list[dict[str, Any]] = []
    for server in servers:
        workers = [m for m in (rss_mb(c) for c in children(server.pid)) if m is not None]
        master = rss_mb(server.pid)
        total = round((master or 0) + sum(workers), 1)
        parts.append({"master_mb": master, "workers_mb": workers, "total_mb": total})
    if len(parts) == 1:
        return parts[0]
    return {
        "master_mb": round(sum(p["master_mb"] or 0 for p in parts), 1),
        "workers_mb": [m for p in parts for m in p["workers_mb"]],
        "total_mb": round(sum(p["total_mb"] for p in parts), 1),
        "servers": parts,
    }


class Rebuild(threading.Thread):
    """A rebuild started after delay_s while the load runs; records when it ended and the
    version it published."""

    def __init__(self, how: str, base: str, env: dict[str, str], delay_s: float) -> None:
        super().__init__(daemon=True)
        self.how, self.base, self.env, self.delay_s = how, base, env, delay_s
        self.result: dict[str, Any] = {"how": how}

    def run(self) -> None:
        time.sleep(self.delay_s)
        started = time.monotonic()
        try:
            if self.how == "cli":
                recsearch(self.env, "build")
                self.result["state"] = "succeeded"
                self.result["index_version"] = get(self.base, "/readyz").get("index_version")
            else:
                job = post(self.base, "/admin/api/rebuild", {})
                while job.get("state") in ("queued", "running"):
                    time.sleep(0.5)
                    job = get(self.base, f"/admin/api/jobs/{job['id']}")
                self.result["state"] = job.get("state")
                self.result["error"] = job.get("error")
                self.result["index_version"] = (job.get("result") or {}).get("version")
        except Exception as exc:  # reported in the row, the load goes on
            self.result["state"] = f"error: {exc}"
        self.result["seconds"] = round(time.monotonic() - started, 1)


def served_versions(
    bases: list[str], version: str | None, workers: int, timeout_s: float = 30
) -> list[dict[str, Any]]:
    """The index version each server searches with after a rebuild: searches until 3 per
    worker in a row answer `version` (each worker reloads on its own, within index_poll_s of
    a request; which worker answers is the kernel's choice) or timeout_s passes."""
    out = []
    for base in bases:
        started = time.monotonic()
        streak, n, seen = 0, 0, None
        while streak < 3 * workers and time.monotonic() - started < timeout_s:
            n += 1
            q = urllib.parse.quote_plus(f"version check {n} {uuid.uuid4().hex[:6]}")
            try:
                seen = get(base, f"/v1/search?k=1&q={q}").get("index_version")
            except OSError as exc:
                seen = f"error: {exc}"
            streak = streak + 1 if version is not None and seen == version else 0
            if streak == 0:
                time.sleep(0.25)
        out.append(
            {
                "port": int(base.rsplit(":", 1)[1]),
                "index_version": seen,
                "picked_up": version is not None and streak >= 3 * workers,
                "searches": n,
                "seconds": round(time.monotonic() - started, 1),
            }
        )
    return out


def wrk_command(
    base: str, script: Path, connections: int, duration_s: int, first_thread: int = 0
) -> list[str]:
    return (
        ["wrk", f"-t{connections}", f"-c{connections}", f"-d{duration_s}s", "--latency"]
        + ["--timeout", "30s", "-s", str(script), base]
        + (["--", str(first_thread)] if first_thread else [])
    )


def wrk_row(stdout: str, connections: int) -> dict[str, Any]:
    """A cell's row from wrk's report and the script's RESULT and LATENCY lines; the
    histogram (µs -> count) is returned under "_latency" for merging, never written out."""
    row: dict[str, Any] = {"connections": connections, **parse_wrk(stdout)}
    result = re.search(r"^RESULT ((?:\d+ ?){6})$", stdout, re.M)
    if result:
        counts = [int(x) for x in result.group(1).split()]
        row["by_kind"] = {k: counts[i] for i, k in enumerate(KINDS) if counts[i]}
        row["non_2xx_by_kind"] = {k: counts[3 + i] for i, k in enumerate(KINDS) if counts[3 + i]}
    histogram = re.search(r"^LATENCY ?(.*)$", stdout, re.M)
    row["_latency"] = {}
    if histogram:
        for pair in histogram.group(1).split():
            value, count = pair.split(":")
            row["_latency"][int(value)] = row["_latency"].get(int(value), 0) + int(count)
    row["errors"] = row["non_2xx"] + row["socket_errors"]
    return row


def percentile_ms(histogram: dict[int, int], p: float) -> float | None:
    """wrk's stats_percentile over a µs histogram: the least latency whose running count
    reaches rank round(p / 100 x count + 0.5) (C's round, half away from zero)."""
    count = sum(histogram.values())
    if not count:
        return None
    rank = math.floor(p / 100 * count + 0.5 + 0.5)
    total = 0
    for value in sorted(histogram):
        total += histogram[value]
        if total >= rank:
            return round(value / 1000, 2)
    return round(max(histogram) / 1000, 2)


def run_wrk(base: str, script: Path, connections: int, duration_s: int) -> dict[str, Any]:
    proc = subprocess.run(
        wrk_command(base, script, connections, duration_s),
        capture_output=True,
        text=True,
        check=True,
    )
    row = wrk_row(proc.stdout, connections)
    del row["_latency"]
    return row


def run_fleet_wrk(
    bases: list[str], script: Path, connections: int, duration_s: int
) -> dict[str, Any]:
    """One wrk per server at the same time, the connections split (the first server gets
    the odd one) and threads numbered on across them; one row for the fleet."""
    shares = [connections // len(bases) + (i < connections % len(bases)) for i in range(len(bases))]
    firsts = [sum(shares[:i]) for i in range(len(bases))]
    procs = [
        (
            base,
            share,
            subprocess.Popen(
                wrk_command(base, script, share, duration_s, first),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for base, share, first in zip(bases, shares, firsts, strict=True)
        if share
    ]
    parts = []
    for base, share, proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, stdout, stderr)
        parts.append({"port": int(base.rsplit(":", 1)[1]), **wrk_row(stdout, share)})
    merged: dict[int, int] = {}
    for part in parts:
        for value, count in part.pop("_latency").items():
            merged[value] = merged.get(value, 0) + count
    row: dict[str, Any] = {
        "connections": connections,
        "requests": sum(p["requests"] for p in parts),
        "rps": round(sum(p["rps"] for p in parts), 2),
        "p50_ms": percentile_ms(merged, 50),
        "p99_ms": percentile_ms(merged, 99),
        "latency": "merged histogram of both wrk",
        "non_2xx": sum(p["non_2xx"] for p in parts),
        "socket_errors": sum(p["socket_errors"] for p in parts),
    }
    for key in ("by_kind", "non_2xx_by_kind"):
        if any(key in p for p in parts):
            total: dict[str, int] = {}
            for p in parts:
                for kind, n in p.get(key, {}).items():
                    total[kind] = total.get(kind, 0) + n
            row[key] = total
    row["errors"] = row["non_2xx"] + row["socket_errors"]
    row["servers"] = parts
    return row


def run_target(
    target: Target,
    env: dict[str, str] | None,
    scripts: dict[str, Path],
    args: argparse.Namespace,
    round_no: int,
) -> list[dict[str, Any]]:
    fleet = target.kind == "fleet"
    workers = max(1, args.workers // FLEET_SERVERS) if fleet else args.workers
    budget = None
    if env is not None and target.kind != "dev":
        budget = thread_budget(env, args.workers, workers)
        if fleet and budget["pin"]:
            env = dict(env, RECSEARCH_ENCODER_THREADS=budget["pin"])
    servers: list[Any] = []
    bases: list[str] = []
    rows: list[dict[str, Any]] = []
    try:
        for i in range(FLEET_SERVERS if fleet else 1):
            port = free_port()
            name = f"{target.name}-{i}" if fleet else target.name
            servers.append(start(target, env, port, workers, args.threads, name))
            bases.append(f"http://127.0.0.1:{port}")
        for base in bases:
            warm(base, target)
        cells = [("search", c) for c in args.search_connections]
        if args.cached:
            cells += [("cached", c) for c in args.search_connections]
        if target.kind != "txtai":
            cells = [("mix", c) for c in args.connections] + cells
        for workload, connections in cells:
            rebuild = None
            if (
                workload == "mix"
                and connections == args.rebuild_connections
                and args.rebuild != "none"
                and env is not None
            ):
                rebuild = Rebuild(args.rebuild, bases[0], env, args.duration / 2)
                rebuild.start()
            script = scripts[f"{workload}-{target.kind == 'txtai'}"]  # cached: search's texts
            if fleet:
                row = run_fleet_wrk(bases, script, connections, args.duration)
            else:
                row = run_wrk(bases[0], script, connections, args.duration)
            if rebuild is not None:
                rebuild.join(timeout=600)
                row["rebuild"] = rebuild.result
                row["rebuild"]["within_load"] = (
                    args.duration / 2 + rebuild.result.get("seconds", 1e9) <= args.duration
                )
                row["rebuild"]["served"] = served_versions(
                    bases, rebuild.result.get("index_version"), workers
                )
            row.update(
                target=target.name,
                workload=workload,
                round=round_no,
                memory=memory(servers, target),
            )
            if budget is not None:
                row["server"] = {
                    "servers": len(servers),
                    "workers_per_server": workers,
                    "threads_per_worker": args.threads,
                    "encoder_threads": budget["fleet" if fleet else "single"]["encoder"],
                    "pool_threads": budget["fleet" if fleet else "single"]["pools"],
                }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for server in servers:
            stop(server)
    return rows


# --- report -----------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'target':<13} {'load':<7} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6}  {'RSS MB total (master; workers)':<32} rebuild"
    ]
    for r in rows:
        mem = r["memory"]
        if "servers" in mem:  # a fleet: each server's master, then every worker
            masters = "+".join(str(s["master_mb"]) for s in mem["servers"])
            workers = ", ".join(str(m) for m in mem["workers_mb"])
            rss = f"{mem['total_mb']} ({masters}; {workers})"
        elif "workers_mb" in mem:
            workers = ", ".join(str(m) for m in mem["workers_mb"])
            rss = f"{mem['total_mb']} ({mem['master_mb']}; {workers})"
        else:
            rss = str(mem.get("process_mb"))
        rebuild = ""
        if "rebuild" in r:
            rb = r["rebuild"]
            inside = "inside the load" if rb.get("within_load") else "ended after the load"
            rebuild = f"{rb['how']} {rb.get('state')} in {rb.get('seconds')} s, {inside}"
            served = rb.get("served", [])
            if served:
                picked = sum(1 for s in served if s["picked_up"])
                rebuild += f"; {rb.get('index_version')} served by {picked}/{len(served)}"
        lines.append(
            f"{r['target']:<13} {r['workload']:<7} {r['connections']:>5} {r['rps']:>8.1f} "
            f"{r['p50_ms'] or 0:>8.1f} {r['p99_ms'] or 0:>8.1f} {r['errors']:>6}  {rss:<32} {rebuild}"
        )
    return "\n".join(lines)


def peer_verdict(rows: list[dict[str, Any]], connections: tuple[int, ...] = (4, 16)) -> list[str]:
    """Issue 28's goal on unique texts at 4 and 16 connections: >= 5x txtai's requests/s
    with p99 <= a quarter of its p99."""
    peer = [
        r
        for r in rows
        if r["target"] == "txtai" and r["connections"] in connections and r["workload"] == "search"
    ]
    if not peer:
        return []
    out = []
    for p in peer:
        ours = [
            r
            for r in rows
            if r["target"] != "txtai"
            and r["workload"] == "search"
            and r["connections"] == p["connections"]
            and r["round"] == p["round"]
        ]
        for r in ours:
            ratio = r["rps"] / p["rps"] if p["rps"] else float("inf")
            p99 = (r["p99_ms"] or 0) / (p["p99_ms"] or 1)
            ok = ratio >= 5 and p99 <= 0.25
            out.append(
                f"round {p['round']}: {r['target']} vs txtai at {p['connections']} connections, "
                "unique texts: "
                f"{ratio:.2f}x the QPS, p99 {p99:.2f}x ({'meets' if ok else 'misses'} the goal)"
            )
    return out


def ceiling_backends(targets: list[Target]) -> list[str]:
    """The query encoders the recsearch targets run: fp32 ONNX, and int8 where a target
    sets RECSEARCH_QUERY_ENCODER (none for a torch-only run)."""
    found = []
    for t in targets:
        if t.kind == "txtai":
            continue
        backend = dict(t.env).get("RECSEARCH_QUERY_ENCODER", "onnx")
        if backend != "torch" and backend not in found:
            found.append(backend)
    return found


def ceiling_lines(
    ceilings: list[dict[str, Any]], rows: list[dict[str, Any]], workers: int
) -> list[str]:
    """Each round's encoder-alone queries/s against txtai's requests/s in the same round: the
    most a server at that precision could do with HTTP and search costing nothing, and how
    that stands against the goal's 5x."""
    out = []
    for c in ceilings:
        line = (
            f"round {c['round']}: the query encoder alone ({c['backend']}, {workers} processes x "
            f"1 thread, one unique claim a call, no HTTP, no search): {c['qps']:.1f} queries/s"
        )
        peer = [
            r
            for r in rows
            if r["target"] == "txtai" and r["workload"] == "search" and r["round"] == c["round"]
        ]
        if peer:
            line += "; " + ", ".join(
                f"{c['qps'] / p['rps']:.2f}x txtai's req/s at {p['connections']} connections"
                for p in peer
                if p["rps"]
            )
        out.append(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SCIFACT)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rs-serve-load"
    )
    parser.add_argument("--duration", type=int, default=20, help="seconds per cell")
    parser.add_argument("--connections", default="1,4,16", help="for the mixed load")
    parser.add_argument(
        "--search-connections", default="1,4,16", help="for anonymous searches only (txtai's load)"
    )
    parser.add_argument("--targets", default="serve-pg,serve-sqlite,dev-sqlite,txtai")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--mix", default="anon=70,user=20,events=10", help="request weights")
    parser.add_argument("--users", type=int, default=200, help="seeded users for user searches")
    parser.add_argument(
        "--cached",
        action="store_true",
        help="also run the search load with repeated texts (the query caches answer), "
        "reported apart as the 'cached' workload",
    )
    parser.add_argument("--rebuild", choices=["admin", "cli", "none"], default="admin")
    parser.add_argument("--rebuild-connections", type=int, default=4)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument(
        "--ceiling-s",
        type=float,
        default=10,
        help="seconds per round to time the query encoder alone (bench/encoder_ceiling.py), "
        "the bound on requests/s at each target's precision; 0 skips it",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",") if c]
    args.search_connections = [int(c) for c in args.search_connections.split(",") if c]
    mix = {k: int(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    if set(mix) - set(KINDS):
        sys.exit(f"--mix takes weights for {', '.join(KINDS)}")
    if not args.data.is_dir():
        sys.exit(f"{args.data} is missing: this benchmark reads BEIR SciFact from shared/data")
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk")
    targets = [TARGETS[t] for t in args.targets.split(",")]
    if any(t.kind == "txtai" for t in targets) and not (TXTAI_INDEX / "peer.json").exists():
        print(f"skipping txtai: no index at {TXTAI_INDEX} (run bench/txtai_peer.sh index)")
        targets = [t for t in targets if t.kind != "txtai"]

    args.workdir.mkdir(parents=True, exist_ok=True)
    envs = prepare_stores(
        args.workdir, args.data, args.pg, {t.store for t in targets if t.store is not None}
    )
    doc_ids = [json.loads(line)["_id"] for line in (args.data / "corpus.jsonl").open()]
    queries = encoder_ceiling.scifact_claims(args.data)
    run_id = uuid.uuid4().hex[:8]  # event_ids new to this run, so events are recorded
    scripts: dict[str, Path] = {}
    for workload in ("mix", "search", "cached"):
        for txtai in (False, True):
            kind = "search" if workload == "cached" else workload
            requests = requests_for(kind, queries, doc_ids, args.users, mix, txtai)
            name = f"{workload}-{'txtai' if txtai else 'recsearch'}.lua"
            scripts[f"{workload}-{txtai}"] = lua_script(
                args.workdir / name, requests, run_id, unique=workload != "cached"
            )

    for env in envs.values():
        seed_users(env, args.workdir, doc_ids, args.users)
    rows: list[dict[str, Any]] = []
    ceilings: list[dict[str, Any]] = []
    backends = ceiling_backends(targets) if args.ceiling_s > 0 else []
    for round_no in range(args.rounds):
        for target in targets:
            env = {**envs[target.store], **dict(target.env)} if target.store else None
            rows += run_target(target, env, scripts, args, round_no)
        for backend in backends:  # after the servers, on an idle machine like theirs
            qps = encoder_ceiling.measure(backend, args.workers, 1, args.ceiling_s, queries)
            ceilings.append({"backend": backend, "round": round_no, "qps": qps})
            print(json.dumps(ceilings[-1]), flush=True)

    print(
        f"\nSciFact: {len(doc_ids)} abstracts, {len(queries)} unique queries, every search text "
        "made unique per request (no query cache answers"
        + ("; the 'cached' rows repeat them" if args.cached else "")
        + f"); {args.duration} s "
        f"per cell; mix {args.mix}; {args.workers} workers x {args.threads} threads; "
        f"{os.cpu_count()} cores"
    )
    fleet_workers = max(1, args.workers // FLEET_SERVERS)
    if any(t.kind == "fleet" for t in targets):
        print(
            f"fleet-pg: {FLEET_SERVERS} servers x {fleet_workers} workers on serve-pg's data dir "
            "and database, connections split between them; p50/p99 from both wrk's latency "
            "histograms merged; RSS summed over both servers"
        )
    print(table(rows))
    for line in peer_verdict(rows):
        print(line)
    for line in ceiling_lines(ceilings, rows, args.workers):
        print(line)
    errors = sum(r["errors"] for r in rows)
    print(f"errors in all cells: {errors}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "serve_load",
                "documents": len(doc_ids),
                "queries": len(queries),
                "duration_s": args.duration,
                "mix": mix,
                "workers": args.workers,
                "threads": args.threads,
                "cores": os.cpu_count(),
                "fleet": {"servers": FLEET_SERVERS, "workers_per_server": fleet_workers},
                "rows": rows,
                "peer": peer_verdict(rows),
                "encoder_ceiling": ceilings,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
