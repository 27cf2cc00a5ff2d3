"""The job history from the terminal (`recsearch jobs`), and the way `build` and `train` run
theirs: in the foreground, with progress bars, recorded as jobs like the admin page's."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from web.cli.base import Context, cli, pass_ctx, progress_bar

if TYPE_CHECKING:
    from indexer.progress import Progress

T = TypeVar("T")


def run_as_job(
    obj: Context,
    kind: str,
    params: dict[str, Any],
    work: Callable[[Progress], tuple[T, dict[str, Any]]],
) -> T:
    """Run work(progress) -> (its value, the job's result) here, in the foreground, as a job
    of the history: running as cli:HOST:PID, its progress on the terminal and in SQL, and
    stopped by a cancel from any process at its next progress report (exit 1). Returns
    work's value and raises what it raised; Conflict when a job of this kind is active."""
    from engine.core.errors import RecsearchError
    from engine.core.processes import current
    from indexer.jobs import FOREGROUND, JobRunner

    runner = JobRunner(obj.runtime)
    raised: list[BaseException] = []
    values: list[T] = []
    with progress_bar(not obj.quiet) as bar:

        def execute(_kind: str, _params: dict[str, Any], recorded: Progress) -> dict[str, Any]:
            def progress(phase: str, done: int, total: int) -> None:
                recorded(phase, done, total)  # raises once the job must stop
                bar(phase, done, total)

            try:
                value, result = work(progress)
            except BaseException as exc:
                raised.append(exc)
                raise
            values.append(value)
            return result

        job_id, lease = runner.start_here(kind, params, f"{FOREGROUND}{current()}")
        if not obj.quiet:
            click.echo(f"job {job_id} ({kind}); `recsearch jobs {job_id}` shows it", err=True)
        state = runner.run_claimed(job_id, lease, execute)
    if state == "succeeded":
        return values[0]
    job = runner.get(job_id)
    if state == "failed" and raised and isinstance(raised[0], RecsearchError):
        raise raised[0]  # `error: ...`, exit 2, as before builds were jobs
    why = f": {job.error}" if job.error else ""
    if state == "lost":
        why = ": this process lost the job's lease (its database connection dropped)"
    click.echo(f"error: job {job_id} ({kind}) {state}{why}", err=True)
    sys.exit(1)


@cli.command()
@click.argument("job_id", type=int, required=False, metavar="[ID]")
@click.option("--cancel", is_flag=True, help="Ask job ID to stop (at its next progress report).")
@click.option("--limit", default=50, show_default=True, help="How many recent jobs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON the admin API returns.")
@pass_ctx
def jobs(obj: Context, job_id: int | None, cancel: bool, limit: int, as_json: bool) -> None:
    """The job history (builds and trainings, from the CLI, the admin page and workers), one
    job's details with ID, or --cancel it."""
    from engine.core.errors import NotFound
    from indexer.jobs import JobRunner
    from indexer.schemas import JobList

    runner = JobRunner(obj.runtime)
    if job_id is None:
        if cancel:
            raise click.UsageError("--cancel needs a job ID")
        found = runner.list(limit=limit)
        if as_json:
            click.echo(JobList(jobs=found).model_dump_json(indent=1))
        elif not found:
            click.echo("no jobs yet: `recsearch build`, or the admin page's rebuild")
        else:
            show_table(found)
        return
    try:
        job = runner.cancel(job_id) if cancel else runner.get(job_id)
    except NotFound:
        raise NotFound(f"no job {job_id}: `recsearch jobs` lists the recent ones") from None
    if as_json:
        click.echo(job.model_dump_json(indent=1))
        return
    show_job(job)
    if cancel and job.state == "running":
        click.echo("cancel requested: the job stops at its next progress report")


def progress_of(job: Any) -> str:
    """`embed 120/325 (36.9%)`, or `-` before the first report."""
    if not job.phase:
        return "-"
    percent = f" ({job.percent}%)" if job.percent is not None else ""
    return f"{job.phase} {job.done}/{job.total}{percent}"


def show_table(found: list[Any]) -> None:
    click.echo(
        f"{'id':>5}  {'kind':<5}  {'state':<9}  {'progress':<24}  {'started (UTC)':<19}  "
        f"{'worker':<24}  error"
    )
    for job in found:
        click.echo(
            f"{job.id:>5}  {job.kind:<5}  {job.state:<9}  {progress_of(job)[:24]:<24}  "
            f"{when(job.started_at or job.created_at):<19}  {(job.worker or '-')[:24]:<24}  "
            f"{(job.error or '')[:60]}".rstrip()
        )


def when(iso: str | None) -> str:
    """`2026-12-06T11:24:18.525200Z` as `2026-12-06 11:24:18`."""
    return iso[:19].replace("T", " ") if iso else "-"


def show_job(job: Any) -> None:
    click.echo(f"job {job.id} ({job.kind}): {job.state}")
    eta = f", eta {job.eta_s:.0f}s" if job.eta_s is not None and job.state == "running" else ""
    rows = [
        ("params", json.dumps(job.params, sort_keys=True)),
        ("progress", progress_of(job) + eta),
        ("attempts", str(job.attempts)),
        ("worker", job.worker or "-"),
        ("created", job.created_at or "-"),
        ("started", job.started_at or "-"),
        ("finished", job.finished_at or "-"),
    ]
    if job.cancel_requested and job.state == "running":
        rows.append(("cancel", "requested"))
    if job.error:
        rows.append(("error", job.error))
    if job.result:
        rows.append(("result", json.dumps(job.result, sort_keys=True)))
    for name, value in rows:
        click.echo(f"  {name:<9} {value}")
