"""`recsearch worker`: a process that runs the jobs servers queue (settings.jobs = "worker").

A worker claims the oldest queued job (indexer.jobs.JobRunner.claim_next), runs it to its end
with its lease held, and claims the next. Between jobs, and every RECOVER_S, it looks for
running jobs whose lease is free: their worker died (kill -9, a lost host), and each goes
back to the queue for its one retry, or fails with the reason after its second loss.

Asked to stop (SIGTERM, SIGINT: a deploy), a worker hands its job back at the job's next
progress report, queued again without counting an attempt, and exits; another worker takes
it over from the start (builds and trainings are idempotent). A worker killed before that
is a lost worker, as above. With RECSEARCH_RAY_ADDRESS set, its builds embed on Ray.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from engine.runtime import Runtime
from indexer.job_run import PROCESS
from indexer.jobs import JobRunner

log = logging.getLogger(__name__)

# How often a worker looks for jobs whose worker was lost (an advisory lock try per running job).
RECOVER_S = 2.0


class Worker:
    """Claims and runs queued jobs until stopped."""

    def __init__(self, runtime: Runtime, *, poll_s: float = 1.0) -> None:
        self.runtime = runtime
        self.poll_s = poll_s
        self.runner = JobRunner(runtime, worker=True)
        self._stopping = threading.Event()

    @property
    def name(self) -> str:
        return PROCESS

    def stop(self) -> None:
        """Stop claiming, and hand the running job back at its next progress report.
        Safe from a signal handler."""
        self._stopping.set()
        self.runner.hand_back()

    def run(self, *, once: bool = False, report: Callable[[str], None] = log.info) -> int:
        """Run jobs until stopped (or, with once, until the queue is empty); returns how many
        jobs this worker ran to an end (any end but handed back)."""
        finished = 0
        recovered_at = -float("inf")
        while not self._stopping.is_set():
            if time.monotonic() - recovered_at >= RECOVER_S:
                settled = self.runner.recover_orphans()
                if settled:
                    report(f"settled {settled} job(s) whose worker was lost")
                recovered_at = time.monotonic()
            claimed = self.runner.claim_next()
            if claimed is None:
                if once:
                    break
                self._stopping.wait(self.poll_s)
                continue
            job_id, lease = claimed
            job = self.runner.get(job_id)
            report(f"job {job_id} ({job.kind}) claimed, attempt {job.attempts}")
            state = self.runner.run_claimed(job_id, lease)
            done = self.runner.get(job_id)
            detail = f": {done.error}" if state == "failed" and done.error else ""
            report(f"job {job_id} ({job.kind}) {_said(state)}{detail}")
            if state != "queued":
                finished += 1
        return finished


def _said(state: str) -> str:
    return {"queued": "handed back to the queue", "lost": "lost its lease"}.get(state, state)
