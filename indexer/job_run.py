"""One claimed job, run in this process: its heartbeat, its progress, and how it ends.

The heartbeat thread writes jobs.heartbeat_at every HEARTBEAT_S, reads a cancel asked for by
any process (jobs.cancel_requested), and checks that the job's lease is still held. Whatever
stops a job (a cancel, a worker handing it back, a lost lease) takes effect at the job's next
progress report: jobs are written to stop there, between batches, never halfway through a
publish.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.core.clock import utcnow
from engine.core.errors import RecsearchError
from engine.core.processes import PROCESS
from engine.runtime import Runtime
from engine.store.election import Leadership
from engine.store.models import Job

if TYPE_CHECKING:
    from indexer.build import BuildReport
    from indexer.train import TrainReport

# What runs a job's work: (kind, params, progress) -> the job's result.
Execute = Callable[[str, dict[str, Any], Any], dict[str, Any]]

log = logging.getLogger("indexer.jobs")  # one logger for jobs, wherever they run

# A running job writes its heartbeat, and reads whether someone asked to cancel it, this often.
HEARTBEAT_S = 2.0
# How long a job's end is retried while the database cannot store it.
RECORD_FOR_S = 300.0


class JobStopped(Exception):
    """Raised inside a job's progress callback once its runner must stop it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "cancel", "handback" or "lost"


class Stop:
    """Why a running job must stop, set from other threads (heartbeat, signal handler)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.event = threading.Event()

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.event.set()

    def check(self) -> None:
        if self.reason is not None:
            raise JobStopped(self.reason)


class JobRun:
    """Runs one job this process claimed (it holds the lease) to its final state."""

    def __init__(
        self,
        runtime: Runtime,
        job_id: int,
        lease: Leadership,
        execute: Execute,
    ) -> None:
        self.runtime = runtime
        self.execute = execute
        self.job_id = job_id
        self.lease = lease
        self.stop = Stop()
        self._done = threading.Event()

    def run(self) -> str:
        """The job's final state here: succeeded, failed, cancelled, queued (handed back) or
        lost (the lease went: another process settles it). An interrupt (Ctrl-C) records it
        cancelled and goes on up."""
        beat = threading.Thread(target=self._heartbeat, name=f"job-{self.job_id}-heartbeat")
        beat.daemon = True
        beat.start()
        try:
            return self._run()
        finally:
            self._done.set()
            beat.join()

    def _heartbeat(self) -> None:
        """Every HEARTBEAT_S: say the job is alive, read a cancel asked for anywhere, and check
        the lease is still held (a dropped PostgreSQL connection loses it)."""
        while not self._done.wait(HEARTBEAT_S):
            try:
                if not self.lease.try_acquire():
                    self.stop.set("lost")
                    return
                with self.runtime.write_session() as session:
                    job = session.get(Job, self.job_id)
                    if job is None:
                        return
                    job.heartbeat_at = utcnow()
                    if job.cancel_requested:
                        self.stop.set("cancel")
            except Exception:  # the database is away for a moment: the next beat tries again
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)

    def _update(self, **fields: Any) -> None:
        with self.runtime.write_session() as session:
            job = session.get(Job, self.job_id)
            if job is not None:
                for name, value in fields.items():
                    setattr(job, name, value)
                job.heartbeat_at = utcnow()

    def _record(self, **fields: Any) -> None:
        """Write a job's end, retrying while the database cannot take it (full, restarting):
        the job keeps its real outcome, and its lease, until it is written, rather than
        ending as an orphan of unknown cause. Gives up after RECORD_FOR_S."""
        deadline = time.monotonic() + RECORD_FOR_S
        while True:
            try:
                self._update(**fields)
                return
            except Exception:
                if time.monotonic() > deadline:
                    log.exception("job %s: could not record its end %s", self.job_id, fields)
                    raise
                log.warning("job %s: recording its end failed; retrying", self.job_id)
                time.sleep(1.0)

    def _run(self) -> str:
        phase_state: dict[str, Any] = {"phase": None, "since": time.monotonic(), "written": 0.0}

        def progress(phase: str, done: int, total: int) -> None:
            self.stop.check()
            now = time.monotonic()
            if phase != phase_state["phase"]:
                phase_state.update(phase=phase, since=now)
            elif now - phase_state["written"] < 0.5 and done < total:
                return  # at most two writes a second
            phase_state["written"] = now
            elapsed = max(now - phase_state["since"], 1e-6)
            rate = done / elapsed if done else None
            eta = (total - done) / rate if rate and total else None
            self._update(phase=phase, done=done, total=total, rate=rate, eta_s=eta)

        with self.runtime.session() as session:
            job = session.get(Job, self.job_id)
            if job is None:
                return "lost"
            kind, params = job.kind, dict(job.params or {})
        try:
            self.stop.check()
            result = self.execute(kind, params, progress)
            self._record(state="succeeded", result=result, finished_at=utcnow(), error=None)
            return "succeeded"
        except JobStopped as stopped:
            return self._stopped(stopped.reason)
        except RecsearchError as exc:  # an expected condition: its reason says it all
            log.error("job %s (%s) failed: %s", self.job_id, kind, exc)
            self._record(state="failed", error=str(exc), finished_at=utcnow())
        except Exception as exc:  # a bug: keep the traceback; the job records the reason
            log.exception("job %s (%s) failed", self.job_id, kind)
            self._record(state="failed", error=str(exc), finished_at=utcnow())
        except BaseException:  # Ctrl-C in a foreground job: it ends here, with its process
            try:
                self._update(state="cancelled", error="interrupted", finished_at=utcnow())
            except Exception:  # its lease goes with the process: another one settles it
                log.warning("job %s: recording its interrupt failed", self.job_id, exc_info=True)
            raise
        return "failed"

    def _stopped(self, reason: str) -> str:
        if reason == "cancel":
            self._record(state="cancelled", finished_at=utcnow())
            return "cancelled"
        if reason == "handback":  # not a failed attempt: the next worker starts it afresh
            with self.runtime.write_session() as session:
                job = session.get(Job, self.job_id)
                if job is not None and job.state == "running" and job.worker == PROCESS:
                    job.state, job.worker, job.started_at = "queued", None, None
                    job.attempts = max(0, (job.attempts or 1) - 1)
                    job.phase, job.done, job.total, job.rate, job.eta_s = None, 0, 0, None, None
                    job.heartbeat_at = utcnow()
            log.info("job %s handed back to the queue", self.job_id)
            return "queued"
        # The lease is gone: another process may settle or run the job now; write nothing.
        log.error("job %s stopped: this process lost its lease (database connection)", self.job_id)
        return "lost"


def execute(runtime: Runtime, kind: str, params: dict[str, Any], progress: Any) -> dict[str, Any]:
    """Run a job's function (the CLI's own) and return what the job's result shows."""
    if kind == "build":
        from indexer.build import build

        with runtime.session() as session:
            report = build(runtime, session, progress=progress)
        return build_result(report)
    if kind == "train-encoder":
        from indexer.encoder_tuning import TuneOptions, tune_from_history

        with runtime.session() as session:
            tuned = tune_from_history(
                runtime,
                session,
                options=TuneOptions(epochs=int(params.get("epochs", TuneOptions.epochs))),
                promote=bool(params.get("promote", False)),
                progress=progress,
            )
        return tuned.to_dict()
    from indexer.train import default_source, train_from_events, train_from_impressions

    promote = bool(params.get("promote", False))
    with runtime.session() as session:
        source = params.get("source", "auto")
        why = f"source: {source}"
        if source == "auto":
            source, why = default_source(runtime, session)
        train = train_from_events if source == "events" else train_from_impressions
        _, train_report = train(runtime, session, promote=promote, progress=progress)
    return train_result(train_report, source, why)


def build_result(report: BuildReport) -> dict[str, Any]:
    """What a build job's result shows, wherever it ran."""
    result: dict[str, Any] = {
        "version": report.version,
        "items": report.item_count,
        "index": report.factory,
        "recall_at_10": report.recall_at_10,
        "build_seconds": round(report.build_seconds, 2),
    }
    if report.skipped:  # `build --if-stale` found the published version up to date
        result["skipped"] = True
    return result


def train_result(report: TrainReport, source: str, why: str) -> dict[str, Any]:
    """What a training job's result shows: the report, and which history it learned from."""
    return {**report.to_dict(), "source": source, "source_reason": why}
