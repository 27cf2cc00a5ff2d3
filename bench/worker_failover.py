"""Kill and hand-back trials of `recsearch worker`: how a queued build survives losing its
worker, counted over many trials, on PostgreSQL.

    .venv/bin/python bench/worker_failover.py [--trials 10] [--pg URL] [--out FILE]

Two real `recsearch worker` processes (RECSEARCH_JOBS=worker) watch one PostgreSQL database
(a fresh one, dropped at the end) holding the sample catalog. Each trial queues a build from
this process (standing for a server), waits until a worker is embedding (a progress report
with items done), then stops that worker: trials alternate `kill -9` and SIGTERM. It reports,
per trial, the outcome the job ended in and the seconds from the signal to the job running
again on the other worker (the kill: its lease seen free, the job requeued and claimed; the
SIGTERM: handed back and claimed) and to the job's end. The stopped worker is started again
before the next trial. Every build embeds from scratch (each trial first rewrites every
item's text, so no vector is reused): a batch size of 2 makes many progress reports. Prints a
table and writes JSON (default bench/results/worker_failover.json). A job never ends other
than `succeeded` here unless something is wrong: each is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.core.config import Settings  # noqa: E402
from engine.runtime import Runtime  # noqa: E402
from indexer.ingest import ingest  # noqa: E402
from indexer.jobs import JobRunner  # noqa: E402
from tests.serving import WorkerProcess  # noqa: E402

CATALOG = ROOT / "data" / "catalog.jsonl"


def rewrite(runtime: Runtime, path: Path, trial: int) -> None:
    """Every item's text changed, so the trial's build reuses no vector."""
    rows = [json.loads(line) for line in CATALOG.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        row["text"] = f"{row.get('text') or ''} (trial {trial})"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with runtime.write_session() as session:
        ingest(runtime, session, path)


def until(check: Any, timeout_s: float = 300) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/worker_failover.json")
    args = parser.parse_args()

    base = make_url(args.pg)
    name = f"recsearch_failover_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    work = Path(tempfile.mkdtemp(prefix="worker-failover-"))
    workers: list[WorkerProcess] = []
    rows: list[dict[str, Any]] = []
    try:
        settings = Settings(data_dir=work / "var", database_url=url, jobs="worker")
        runtime = Runtime(settings)
        with runtime.write_session() as session:
            ingest(runtime, session, CATALOG)
        runner = JobRunner(runtime)
        env = dict(
            os.environ,
            RECSEARCH_DATA_DIR=str(settings.data_dir),
            RECSEARCH_DATABASE_URL=url,
            RECSEARCH_JOBS="worker",
            RECSEARCH_EMBED_BATCH_SIZE="2",
            RECSEARCH_ENCODER_THREADS="1",  # two workers on two cores
        )
        logs = work / "workers.log"
        workers = [WorkerProcess(env, logs), WorkerProcess(env, logs)]
        for trial in range(args.trials):
            how = "kill -9" if trial % 2 == 0 else "SIGTERM"
            rewrite(runtime, work / f"catalog-{trial}.jsonl", trial)  # embed from scratch
            job = runner.start("build")

            def embedding(job: Any = job) -> Any:
                now = runner.get(job.id)
                if now.phase == "embed" and now.done > 0 and now.worker:
                    return now
                return None

            running = until(embedding)
            if running is None:
                rows.append({"trial": trial + 1, "signal": how, "outcome": "never embedded"})
                continue
            victim = next(w for w in workers if running.worker.endswith(w.name_fragment))
            signalled = time.monotonic()
            os.kill(victim.process.pid, signal.SIGKILL if how == "kill -9" else signal.SIGTERM)

            def resumed(job: Any = job, victim: WorkerProcess = victim) -> Any:
                now = runner.get(job.id)
                moved = now.worker is not None and not now.worker.endswith(victim.name_fragment)
                return (
                    now
                    if (now.state == "running" and moved)
                    or now.state
                    not in (
                        "queued",
                        "running",
                    )
                    else None
                )

            again = until(resumed, 120)
            resumed_s = time.monotonic() - signalled if again else None
            done = runner.wait(job.id, 300)
            rows.append(
                {
                    "trial": trial + 1,
                    "signal": how,
                    "outcome": done.state,
                    "attempts": done.attempts,
                    "resumed_after_s": None if resumed_s is None else round(resumed_s, 2),
                    "ended_after_s": round(time.monotonic() - signalled, 2),
                    "error": done.error,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            victim.process.wait(60)
            workers[workers.index(victim)] = WorkerProcess(env, logs)
            victim.kill()
        runtime.close()
    finally:
        for worker in workers:
            worker.kill()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{'trial':>5} {'signal':8} {'outcome':10} {'attempts':>8} {'resumed s':>9} {'ended s':>8}"
    )
    for row in rows:
        print(
            f"{row['trial']:>5} {row['signal']:8} {row['outcome']:10} "
            f"{row.get('attempts', '-'):>8} {row.get('resumed_after_s') or '-':>9} "
            f"{row.get('ended_after_s', '-'):>8}"
        )
    summary: dict[str, Any] = {}
    for how in ("kill -9", "SIGTERM"):
        mine = [r for r in rows if r["signal"] == how]
        resumed = sorted(r["resumed_after_s"] for r in mine if r.get("resumed_after_s"))
        summary[how] = {
            "trials": len(mine),
            "succeeded": sum(r["outcome"] == "succeeded" for r in mine),
            "failed": sum(r["outcome"] == "failed" for r in mine),
            "other": sum(r["outcome"] not in ("succeeded", "failed") for r in mine),
            "resumed_after_s_max": resumed[-1] if resumed else None,
            "resumed_after_s_median": resumed[len(resumed) // 2] if resumed else None,
        }
        print(f"{how}: {summary[how]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "trials": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
