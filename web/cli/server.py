"""Commands that serve: the HTTP API (gunicorn, or Flask's development server) and its key."""

from __future__ import annotations

import click

from web.cli.base import (
    Context,
    cli,
    pass_ctx,
)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(1), help="gunicorn workers."
)
@click.option(
    "--threads", default=4, show_default=True, type=click.IntRange(1), help="Threads per worker."
)
@click.option("--dev", is_flag=True, help="Flask's development server (one process) instead.")
@pass_ctx
def serve(obj: Context, host: str, port: int, workers: int, threads: int, dev: bool) -> None:
    """Serve the HTTP API: gunicorn with N workers; SIGTERM drains in-flight requests."""
    # The one place the CLI reaches into web/: serving is what this command is for.
    from engine.core.secrets import api_key
    from web.auth import open_areas
    from web.server import LOCAL_HOSTS, encoder_threads, pool_threads, run, tune_process

    settings = obj.settings
    if settings.vector_store == "milvus" and workers > 1 and not dev:
        from engine.core.values import is_lite_uri

        if is_lite_uri(settings.milvus_target):
            # Milvus Lite locks its folder to one process: the second worker could not open it.
            raise click.UsageError(
                f"Milvus Lite ({settings.milvus_target}) serves one process: use --workers 1, "
                "or set RECSEARCH_MILVUS_URI to a Milvus server (http://host:19530) for more"
            )
    api_key(settings)  # created once here, not raced by the workers
    opened = ", ".join(sorted(open_areas(settings, host in LOCAL_HOSTS))) or "nothing"
    if dev:
        from web.app import create_app

        runtime = obj.runtime
        app = create_app(runtime=runtime, loopback=host in LOCAL_HOSTS)
        runtime.searcher  # load the model before the first request, not during it  # noqa: B018
        runtime.watch.ready()
        tune_process()
        opened = ", ".join(sorted(app.config["RECSEARCH_OPEN"])) or "nothing"
        click.echo(f"recsearch (development server) on http://{host}:{port}  (Ctrl-C to stop)")
        click.echo(f"open without a key: {opened}; everything else needs the API key")
        app.run(host=host, port=port, threaded=True, use_reloader=False)
        return
    click.echo(
        f"recsearch serving on http://{host}:{port} with {workers} workers × {threads} threads, "
        f"{encoder_threads(settings, workers)} encoder threads each "
        f"({pool_threads(settings, workers)} for pools that spin)  (Ctrl-C to stop)"
    )
    click.echo(f"open without a key: {opened}; everything else needs the API key (`recsearch key`)")
    run(settings, host=host, port=port, workers=workers, threads=threads)


@cli.command()
@pass_ctx
def key(obj: Context) -> None:
    """Print the API key (generated into the data dir on first use)."""
    from engine.core.secrets import api_key

    click.echo(api_key(obj.settings))


@cli.command()
@click.option(
    "--poll",
    "poll_s",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05),
    help="Seconds between looks at the queue when it is empty.",
)
@click.option("--once", is_flag=True, help="Run the queued jobs, then exit.")
@pass_ctx
def worker(obj: Context, poll_s: float, once: bool) -> None:
    """Run the jobs servers queue (with RECSEARCH_JOBS=worker): builds and trainings.

    SIGTERM or Ctrl-C hands the running job back to the queue for another worker and exits.
    """
    import signal

    from indexer.worker import Worker

    running = Worker(obj.runtime, poll_s=poll_s)

    def stop(signum: int, _frame: object) -> None:
        click.echo(f"worker {running.name}: {signal.Signals(signum).name}; stopping", err=True)
        running.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"worker {running.name}: waiting for jobs", err=True)
    ran = running.run(once=once, report=lambda line: click.echo(f"worker: {line}", err=True))
    click.echo(f"worker {running.name}: stopped after {ran} job(s)", err=True)
