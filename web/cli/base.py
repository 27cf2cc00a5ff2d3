"""What every command shares: the `recsearch` group, its context (settings, a runtime made on
first use), progress bars and the way loads report their rejected rows."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # imported where a command runs: `--help` loads click and this tree only
    from engine.core.config import Settings
    from engine.runtime import Runtime
    from indexer.progress import Progress

MAX_PROBLEMS_SHOWN = 50


class Context:
    """What a command gets: the settings (read from RECSEARCH_* when settings is None, on
    first use) and a runtime made on first use; tests hand in both."""

    def __init__(
        self, settings: Settings | None, quiet: bool, runtime: Runtime | None = None
    ) -> None:
        self._settings = settings
        self.quiet = quiet
        self._runtime = runtime

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from engine.core.config import Settings

            self._settings = Settings.from_env()
        return self._settings

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            from engine.runtime import Runtime

            self._runtime = Runtime(self.settings)
        return self._runtime


pass_ctx = click.make_pass_decorator(Context)


def installed_version() -> str:
    """The installed package's version (pyproject's), or the source tree's when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recsearch")
    except PackageNotFoundError:
        from engine import __version__

        return f"{__version__} (not installed)"


def show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"recsearch {installed_version()}")
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=show_version,
    help="Show the installed version and exit.",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """recsearch: personalized search and recommendations.

    Configuration comes from RECSEARCH_* environment variables (RECSEARCH_DATA_DIR,
    RECSEARCH_DATABASE_URL, RECSEARCH_MODEL, RECSEARCH_INDEX_TYPE, ...); every command reads
    the same ones, so commands run in separate processes share one state.
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ctx.obj is None:  # tests hand in a context with a shared encoder
        ctx.obj = Context(None, quiet)  # RECSEARCH_* are read when a command first needs them


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress]:
    """A tqdm bar per phase on stderr; a no-op when quiet."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def report(phase: str, done: int, total: int) -> None:
        if not enabled:
            return
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[phase] = tqdm(
                total=total or None, desc=f"{phase:>8}", unit="it", file=sys.stderr, leave=True
            )
        if total and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield report
    finally:
        for bar in bars.values():
            bar.close()


def load_options(what: str) -> Any:
    """The options ingest and events share: all or nothing, or --skip-invalid with rejects."""

    def decorate(command: Any) -> Any:
        command = click.option(
            "--rejects",
            type=click.Path(path_type=Path),
            help="Where --skip-invalid writes rejected rows (default: DATA_DIR/rejects/).",
        )(command)
        command = click.option(
            "--skip-invalid",
            is_flag=True,
            help=f"Commit the valid {what}; write rejects to a file.",
        )(command)
        return click.argument("file", type=click.Path(path_type=Path))(command)

    return decorate


def rejects_path(obj: Context, file: Path, skip_invalid: bool, rejects: Path | None) -> Path | None:
    if skip_invalid and rejects is None:
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        return obj.settings.data_dir / "rejects" / f"{file.stem}.{stamp}.rejects.jsonl"
    return rejects


def load_file(
    obj: Context, job: Any, file: Path, skip_invalid: bool, rejects: Path | None
) -> tuple[Any, float]:
    """Run a loading job (ingest, events) over a file in one write transaction, with a
    progress bar: (its report, seconds taken)."""
    started = time.perf_counter()
    runtime = obj.runtime
    with runtime.write_session() as session, progress_bar(not obj.quiet) as progress:
        report = job(
            runtime,
            session,
            file,
            skip_invalid=skip_invalid,
            rejects_path=rejects_path(obj, file, skip_invalid, rejects),
            progress=progress,
        )
    return report, time.perf_counter() - started


def finish_load(file: Path, report: Any, summary: str) -> None:
    """Print problems; exit 1 when nothing was accepted, else the summary and rejects file."""
    show_problems(report.problems)
    if not report.accepted:
        click.echo(
            f"{file}: {report.rejected} invalid row(s) of {report.rows}; nothing was changed. "
            "Fix them, or rerun with --skip-invalid to load the valid rows.",
            err=True,
        )
        sys.exit(1)
    click.echo(summary)
    if report.rejects_path:
        click.echo(f"rejected rows with reasons: {report.rejects_path}")


def show_problems(problems: list[Any]) -> None:
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        click.echo(f"  {problem}", err=True)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        click.echo(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more", err=True)
