"""Background jobs: index builds and model training, the same job functions the CLI calls,
with their state and progress in SQL for any process to read.

Who runs a job: with settings.jobs "server", a thread of the server that took the request
(the quick start's one process); with "worker", a `recsearch worker` process
(indexer.worker) that claims queued jobs from SQL; `recsearch build` and `train` run theirs
in the foreground ("cli:HOST:PID"; never retried by a worker). Each holds the job's lease, a
lock named after the job (engine.store.election: a PostgreSQL advisory lock on a connection
of its own, an flock beside an SQLite file) that dies with the process, even by SIGKILL. A
running job whose lease is free has lost its process: it is retried once when workers run
jobs (builds and trainings are idempotent), and failed with the reason otherwise. Any
process can cancel a job: the request is a column the runner reads with its heartbeat.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from engine.core.clock import iso_z, utcnow
from engine.core.errors import Conflict, InvalidInput, NotFound
from engine.runtime import Runtime
from engine.store.election import FileLeadership, Leadership, leadership_for
from engine.store.models import Job
from indexer.job_run import PROCESS, Execute, JobRun, Stop, execute
from indexer.schemas import Job as JobOut

log = logging.getLogger(__name__)

KINDS = ("build", "train", "train-encoder")
ACTIVE = ("queued", "running")
TRAIN_SOURCES = ("auto", "impressions", "events")
# A job queued for a server thread that never started it (the server stopped first).
ORPHAN_AFTER = timedelta(seconds=30)
# Runs a job gets when its process is lost: the first and one retry.
MAX_ATTEMPTS = 2
# The worker of a job a command runs in its foreground (`recsearch build`): "cli:HOST:PID".
FOREGROUND = "cli:"
# Job ids are 64-bit signed in both databases; a larger one would fail inside the driver.
MAX_JOB_ID = 2**63 - 1


def job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        kind=job.kind,
        state=job.state,  # type: ignore[arg-type]  # one of the states the table allows
        params=job.params,
        phase=job.phase,
        done=job.done,
        total=job.total,
        percent=round(100.0 * job.done / job.total, 1) if job.total else None,
        rate=job.rate,
        eta_s=job.eta_s,
        created_at=iso_z(job.created_at),
        started_at=iso_z(job.started_at),
        finished_at=iso_z(job.finished_at),
        error=job.error,
        result=job.result,
        attempts=job.attempts or 0,
        worker=job.worker,
        cancel_requested=bool(job.cancel_requested),
    )


class JobRunner:
    """Queues jobs, runs the ones this process claims, and finds those whose process is gone;
    one active job per kind across processes.

    The database enforces the "one active job per kind": a partial unique index on jobs.kind
    over the queued and running rows (migration 0006), so two servers starting the same kind
    at the same instant get one job and one Conflict.
    """

    def __init__(self, runtime: Runtime, *, worker: bool = False) -> None:
        self.runtime = runtime
        # Servers with settings.jobs == "worker" only queue; workers claim, and requeue a job
        # whose worker was lost.
        self.queue_only = worker or runtime.settings.jobs == "worker"
        self._stops: dict[int, Stop] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()

    # --- any process -------------------------------------------------------------------

    def start(self, kind: str, params: dict[str, Any] | None = None) -> JobOut:
        """Queue a job, and run it on a thread unless workers run jobs; Conflict (409) if one
        of its kind is active."""
        params = dict(params or {})
        if kind not in KINDS:
            raise InvalidInput(f"unknown job kind {kind!r}; expected one of {', '.join(KINDS)}")
        if kind == "train" and params.get("source", "auto") not in TRAIN_SOURCES:
            raise InvalidInput(f"source must be one of {', '.join(TRAIN_SOURCES)}")
        snapshot, _ = self._insert(kind, params)
        if self.queue_only:
            return snapshot
        job_id = snapshot.id
        lease = self.claim(job_id)
        if lease is None:  # cancelled, or taken by a worker, in the instant since
            return self.get(job_id)
        thread = threading.Thread(
            target=self.run_claimed, args=(job_id, lease), name=f"job-{job_id}", daemon=True
        )
        with self._lock:
            self._threads[job_id] = thread
        thread.start()
        return snapshot

    def start_here(self, kind: str, params: dict[str, Any], worker: str) -> tuple[int, Leadership]:
        """A job this process runs now in its foreground (with run_claimed): inserted running
        as `worker`, its lease taken before the row commits, so no worker claims it and no
        process takes it for lost. Its id and lease; Conflict (409) if one of its kind is active."""
        snapshot, lease = self._insert(kind, dict(params), worker)
        assert lease is not None  # _insert takes it whenever a worker is named
        return snapshot.id, lease

    def _insert(
        self, kind: str, params: dict[str, Any], worker: str | None = None
    ) -> tuple[JobOut, Leadership | None]:
        """A new job: queued, or with a worker running as it, with its lease held."""
        self.recover_orphans()
        now = utcnow()
        lease: Leadership | None = None
        try:
            with self.runtime.write_session() as session:
                _refuse_if_active(session, kind)  # the usual case, with a helpful message
                job = Job(kind=kind, state="queued", params=params, done=0, total=0)
                job.created_at = job.heartbeat_at = now
                job.attempts, job.cancel_requested = 0, False
                if worker is not None:
                    job.state, job.worker, job.attempts, job.started_at = "running", worker, 1, now
                session.add(job)
                session.flush()
                if worker is not None:
                    taken = self._lease(job.id)
                    if not taken.try_acquire():  # a stale holder of a reused id: refuse
                        _drop(taken, unlink=False)
                        raise Conflict(f"job {job.id}'s lease is held elsewhere; start it again")
                    lease = taken
                snapshot = job_out(job)
        except BaseException as exc:
            if lease is not None:
                _drop(lease)
            if not isinstance(exc, IntegrityError):
                raise
            # Another process inserted one between our check and our insert; the unique index
            # on active jobs refused ours (PostgreSQL waits for that process to commit first).
            with self.runtime.session() as session:
                _refuse_if_active(session, kind)
            raise Conflict(f"a {kind} job is already active; one at a time") from None
        return snapshot, lease

    def get(self, job_id: int) -> JobOut:
        """The job; NotFound (404) for an unknown id, or one no job can have."""
        _check_id(job_id)
        with self.runtime.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id}")
            return job_out(job)

    def list(self, limit: int = 50) -> list[JobOut]:
        with self.runtime.session() as session:
            jobs = session.scalars(select(Job).order_by(Job.id.desc()).limit(limit))
            return [job_out(j) for j in jobs]

    def cancel(self, job_id: int) -> JobOut:
        """Cancel a queued job at once, and ask a running one, in whichever process runs it,
        to stop at its next progress report or heartbeat."""
        _check_id(job_id)
        with self.runtime.write_session() as session:
            # Guarded updates: a worker may claim the queued job in this same instant.
            queued = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == "queued")
                .values(state="cancelled", finished_at=utcnow())
            )
            if not queued.rowcount:  # type: ignore[attr-defined]
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == "running")
                    .values(cancel_requested=True)
                )
            job = session.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id}")
            if job.state not in ACTIVE and not queued.rowcount:  # type: ignore[attr-defined]
                raise Conflict(f"job {job_id} already {job.state}")
        stop = self._stops.get(job_id)
        if stop is not None:
            stop.set("cancel")
        elif job.state == "running" and job_id not in self._threads:
            self._cancel_if_unowned(job_id)
        return self.get(job_id)

    def _cancel_if_unowned(self, job_id: int) -> None:
        """A running job no process holds the lease of will never read its cancel: end it."""
        lease = self._lease(job_id)
        if not lease.try_acquire():
            _drop(lease, unlink=False)
            return
        try:
            with self.runtime.write_session() as session:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == "running")
                    .values(state="cancelled", finished_at=utcnow())
                )
        finally:
            _drop(lease)

    def wait(self, job_id: int, timeout_s: float = 600) -> JobOut:
        """The job once it has finished, wherever it runs (or as it is after timeout_s)."""
        deadline = time.monotonic() + timeout_s
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout_s)
        job = self.get(job_id)
        while job.state in ACTIVE and time.monotonic() < deadline:
            time.sleep(0.2)
            job = self.get(job_id)
        return job

    def recover_orphans(self) -> int:
        """Settle jobs whose process is gone: a running job whose lease is free (requeued for
        its one retry when workers run jobs, failed otherwise), and a job queued for a
        server thread that never started. Returns how many were settled."""
        count = 0
        with self.runtime.session() as session:
            running = [
                (j.id, j.worker)
                for j in session.scalars(select(Job).where(Job.state == "running"))
                if j.id not in self._threads and j.id not in self._stops
            ]
        for job_id, worker in running:
            lease = self._lease(job_id)
            if not lease.try_acquire():
                _drop(lease, unlink=False)
                continue  # its process holds it: alive
            try:
                count += self._settle_lost(job_id, worker)
            finally:
                _drop(lease)
        if not self.queue_only:
            count += self._fail_stale_queued()
        return count

    # --- the process that runs a job ----------------------------------------------------

    def claim_next(self) -> tuple[int, Leadership] | None:
        """Claim the oldest queued job for this process (a worker): its id and lease, or None.

        FOR UPDATE SKIP LOCKED lets workers claim side by side without waiting on each
        other's rows; the guarded update and the lease decide, on SQLite too.
        """
        try:
            with self.runtime.write_session() as session:
                found = session.scalars(
                    select(Job.id)
                    .where(Job.state == "queued")
                    .order_by(Job.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
        except OperationalError:  # SQLite: another writer held the file; next poll
            log.debug("claiming a job met a busy database", exc_info=True)
            return None
        if found is None:
            return None
        lease = self.claim(found)
        return None if lease is None else (found, lease)

    def claim(self, job_id: int) -> Leadership | None:
        """Take a queued job for this process: its lease first, then the row (only if still
        queued). None when it was cancelled or claimed elsewhere meanwhile."""
        lease = self._lease(job_id)
        if not lease.try_acquire():
            _drop(lease, unlink=False)
            return None
        try:
            with self.runtime.write_session() as session:
                claimed = session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == "queued")
                    .values(
                        state="running",
                        attempts=Job.attempts + 1,
                        worker=PROCESS,
                        started_at=utcnow(),
                        heartbeat_at=utcnow(),
                        phase=None,
                        done=0,
                        total=0,
                    )
                )
                ok = bool(claimed.rowcount)  # type: ignore[attr-defined]
        except BaseException:
            _drop(lease)
            raise
        if not ok:
            _drop(lease)
            return None
        return lease

    def run_claimed(self, job_id: int, lease: Leadership, execute: Execute | None = None) -> str:
        """Run a claimed job here to its end (or until stopped); returns its final state.
        execute, when given, runs it in place of the job functions (the CLI's own call)."""
        run = JobRun(self.runtime, job_id, lease, execute or self._execute)
        with self._lock:
            self._stops[job_id] = run.stop
        try:
            return run.run()
        finally:
            with self._lock:
                self._stops.pop(job_id, None)
                self._threads.pop(job_id, None)
            _drop(lease)

    def _execute(self, kind: str, params: dict[str, Any], progress: Any) -> dict[str, Any]:
        return execute(self.runtime, kind, params, progress)

    def hand_back(self) -> None:
        """Stop every job this process runs at its next progress report and queue it again
        (a worker asked to stop: another one takes the job over)."""
        for stop in list(self._stops.values()):  # no lock: a signal handler calls this
            stop.set("handback")

    # --- internals ----------------------------------------------------------------------

    def _lease(self, job_id: int) -> Leadership:
        return leadership_for(self.runtime.db, f"job-{job_id}")

    def _settle_lost(self, job_id: int, worker: str | None) -> int:
        """A running job whose lease this process now holds: its process is gone."""
        # A foreground job is started again by the person who ran it, not by a worker.
        retry = self.queue_only and not (worker or "").startswith(FOREGROUND)
        with self.runtime.write_session() as session:
            job = session.get(Job, job_id)
            if job is None or job.state != "running":
                return 0
            attempts = job.attempts or 1
            lost = (
                f"the process running it ({worker or 'unknown'}) stopped during attempt {attempts}"
            )
            if retry and attempts < MAX_ATTEMPTS:
                job.state, job.worker, job.started_at = "queued", None, None
                job.error = f"retrying: {lost}"
                log.warning("job %s (%s): %s; queued again", job_id, job.kind, lost)
            else:
                job.state, job.finished_at = "failed", utcnow()
                again = "; not retried again" if retry else "; start it again"
                job.error = f"orphaned: {lost}{again}"
                log.error("job %s (%s) failed: %s", job_id, job.kind, job.error)
        return 1

    def _fail_stale_queued(self) -> int:
        cutoff = utcnow() - ORPHAN_AFTER
        with self.runtime.write_session() as session:
            stale = session.execute(
                update(Job)
                .where(Job.state == "queued", Job.created_at < cutoff)
                .values(
                    state="failed",
                    finished_at=utcnow(),
                    error="orphaned: the server that queued it stopped before starting it; "
                    "start it again",
                )
            )
            return int(stale.rowcount)  # type: ignore[attr-defined]


def _drop(lease: Leadership, *, unlink: bool = True) -> None:
    """Release a lease; a job's lock file beside an SQLite database goes with it."""
    if unlink and isinstance(lease, FileLeadership):
        Path(lease.path).unlink(missing_ok=True)
    lease.release()


def _check_id(job_id: int) -> None:
    if not 1 <= job_id <= MAX_JOB_ID:
        raise NotFound(f"job {job_id}")


def _refuse_if_active(session: Session, kind: str) -> None:
    """Conflict (409) naming the active job of this kind, if there is one."""
    active = session.scalars(
        select(Job).where(Job.kind == kind, Job.state.in_(ACTIVE)).order_by(Job.id)
    ).first()
    if active is not None:
        raise Conflict(f"job {active.id} ({kind}) is already {active.state}; one at a time")
