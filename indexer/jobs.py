"""Background jobs: index builds and model training on a worker thread, the same job
functions the CLI calls, with their state and progress in SQL for any process to read."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.core.clock import iso_z, utcnow
from engine.core.errors import Conflict, InvalidInput, NotFound, RecsearchError
from engine.runtime import Runtime
from engine.store.models import Job
from indexer.schemas import Job as JobOut

log = logging.getLogger(__name__)

KINDS = ("build", "train")
ACTIVE = ("queued", "running")
TRAIN_SOURCES = ("auto", "impressions", "events")
# A running job writes its heartbeat at least this often; three misses make it an orphan.
HEARTBEAT_S = 5.0
ORPHAN_AFTER = timedelta(seconds=3 * HEARTBEAT_S + 15)
# Job ids are 64-bit signed in both databases; a larger one would fail inside the driver.
MAX_JOB_ID = 2**63 - 1


class JobCancelled(Exception):
    """Raised inside a job's progress callback once a cancel was requested."""


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
    )


class JobRunner:
    """Starts jobs on threads of this process; one active job per kind across processes.

    The database enforces the "one active job per kind": a partial unique index on jobs.kind
    over the queued and running rows (migration 0006), so two servers starting the same kind
    at the same instant get one job and one Conflict.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._cancel: dict[int, threading.Event] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()

    def recover_orphans(self) -> int:
        """Mark jobs whose process stopped (no heartbeat) as failed, with the reason."""
        cutoff = utcnow() - ORPHAN_AFTER
        count = 0
        with self.runtime.write_session() as session:
            for job in session.scalars(select(Job).where(Job.state.in_(ACTIVE))):
                last = job.heartbeat_at or job.created_at
                if last < cutoff and job.id not in self._threads:
                    job.state = "failed"
                    job.error = (
                        f"orphaned: the process running it stopped (no heartbeat since "
                        f"{last.isoformat()}Z); start it again"
                    )
                    job.finished_at = utcnow()
                    count += 1
        return count

    def start(self, kind: str, params: dict[str, Any] | None = None) -> JobOut:
        """Queue a job and run it on a thread; Conflict (409) if one of its kind is active."""
        params = dict(params or {})
        if kind not in KINDS:
            raise InvalidInput(f"unknown job kind {kind!r}; expected one of {', '.join(KINDS)}")
        if kind == "train" and params.get("source", "auto") not in TRAIN_SOURCES:
            raise InvalidInput(f"source must be one of {', '.join(TRAIN_SOURCES)}")
        self.recover_orphans()
        now = utcnow()
        try:
            with self.runtime.write_session() as session:
                _refuse_if_active(session, kind)  # the usual case, with a helpful message
                job = Job(kind=kind, state="queued", params=params, done=0, total=0)
                job.created_at = job.heartbeat_at = now
                session.add(job)
                session.flush()
                job_id = job.id
                snapshot = job_out(job)
        except IntegrityError:
            # Another process inserted one between our check and our insert; the unique index
            # on active jobs refused ours (PostgreSQL waits for that process to commit first).
            with self.runtime.session() as session:
                _refuse_if_active(session, kind)
            raise Conflict(f"a {kind} job is already active; one at a time") from None
        cancel = threading.Event()
        thread = threading.Thread(target=self._run, args=(job_id, cancel), name=f"job-{job_id}")
        with self._lock:
            self._cancel[job_id] = cancel
            self._threads[job_id] = thread
        thread.start()
        return snapshot

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
        """Ask a job to stop at its next progress report (a queued one stops at once)."""
        _check_id(job_id)
        with self.runtime.write_session() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id}")
            if job.state not in ACTIVE:
                raise Conflict(f"job {job_id} already {job.state}")
            event = self._cancel.get(job_id)
            if event is None:  # not ours or not started: nothing runs it here
                job.state = "cancelled"
                job.finished_at = utcnow()
            else:
                event.set()
            return job_out(job)

    def wait(self, job_id: int, timeout_s: float = 600) -> JobOut:
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout_s)
        return self.get(job_id)

    def _update(self, job_id: int, **fields: Any) -> None:
        with self.runtime.write_session() as session:
            job = session.get(Job, job_id)
            if job is not None:
                for name, value in fields.items():
                    setattr(job, name, value)
                job.heartbeat_at = utcnow()

    def _run(self, job_id: int, cancel: threading.Event) -> None:
        started = utcnow()
        self._update(job_id, state="running", started_at=started)
        phase_state: dict[str, Any] = {"phase": None, "since": time.monotonic(), "written": 0.0}

        def progress(phase: str, done: int, total: int) -> None:
            if cancel.is_set():
                raise JobCancelled
            now = time.monotonic()
            if phase != phase_state["phase"]:
                phase_state.update(phase=phase, since=now)
            elif now - phase_state["written"] < 0.5 and done < total:
                return  # at most two writes a second
            phase_state["written"] = now
            elapsed = max(now - phase_state["since"], 1e-6)
            rate = done / elapsed if done else None
            eta = (total - done) / rate if rate and total else None
            self._update(job_id, phase=phase, done=done, total=total, rate=rate, eta_s=eta)

        job = self.get(job_id)
        try:
            result = self._execute(job.kind, job.params, progress)
            self._update(job_id, state="succeeded", result=result, finished_at=utcnow())
        except JobCancelled:
            self._update(job_id, state="cancelled", finished_at=utcnow())
        except RecsearchError as exc:  # an expected condition: its reason says it all
            log.error("job %s (%s) failed: %s", job_id, job.kind, exc)
            self._update(job_id, state="failed", error=str(exc), finished_at=utcnow())
        except Exception as exc:  # a bug: keep the traceback; the job records the reason
            log.exception("job %s (%s) failed", job_id, job.kind)
            self._update(job_id, state="failed", error=str(exc), finished_at=utcnow())
        finally:
            with self._lock:
                self._cancel.pop(job_id, None)
                self._threads.pop(job_id, None)

    def _execute(self, kind: str, params: dict[str, Any], progress: Any) -> dict[str, Any]:
        rt = self.runtime
        if kind == "build":
            from indexer.build import build

            with rt.session() as session:
                report = build(rt, session, progress=progress)
            return {
                "version": report.version,
                "items": report.item_count,
                "index": report.factory,
                "recall_at_10": report.recall_at_10,
                "build_seconds": round(report.build_seconds, 2),
            }
        from indexer.train import default_source, train_from_events, train_from_impressions

        promote = bool(params.get("promote", False))
        with rt.session() as session:
            source = params.get("source", "auto")
            why = f"source: {source}"
            if source == "auto":
                source, why = default_source(rt, session)
            train = train_from_events if source == "events" else train_from_impressions
            _, train_report = train(rt, session, promote=promote, progress=progress)
        return {**train_report.to_dict(), "source": source, "source_reason": why}


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
