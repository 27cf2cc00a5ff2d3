"""Commands that serve: the HTTP API (gunicorn, or Flask's development server), its keys
(the data dir's admin key, and scoped keys in SQL) and the job worker."""

from __future__ import annotations

from datetime import datetime

import click

from web.cli.base import (
    Context,
    cli,
    pass_ctx,
)

# engine.store.api_keys.SCOPES, spelt out so that `--help` loads no SQLAlchemy
# (tests/web/test_cli_startup.py checks that the two agree).
SCOPES = ("search", "events", "admin")


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
    from engine.encoder.prepare import prepare_exports
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
    # Exports missing from the encoder cache are made now, by a child process that takes torch
    # with it when it exits, not inside every worker (engine.encoder.prepare).
    prepare_exports(settings)
    api_key(settings)  # created once here, not raced by the workers
    opened = ", ".join(sorted(open_areas(settings, host in LOCAL_HOSTS))) or "nothing"
    if dev:
        from web.app import create_app
        from web.extensions import IN_FLIGHT

        runtime = obj.runtime
        app = create_app(runtime=runtime, loopback=host in LOCAL_HOSTS)
        runtime.searcher  # load the model before the first request, not during it  # noqa: B018
        runtime.share_cores(app.extensions[IN_FLIGHT].crowded)
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


@cli.group(invoke_without_command=True)
@click.pass_context
def key(ctx: click.Context) -> None:
    """Print the admin API key (generated into the data dir on first use), or manage scoped
    keys (create, list, revoke), which every server sharing the database accepts."""
    if ctx.invoked_subcommand is None:
        from engine.core.secrets import api_key

        click.echo(api_key(ctx.obj.settings))


class Expiry(click.ParamType):
    """--expires: a duration from now (30d, 12h, 90m, 2w) or an ISO date or time, as naive UTC."""

    name = "30d|ISO-DATE"

    def convert(self, value: object, param: click.Parameter | None, ctx: object) -> datetime:
        from engine.core.clock import utcnow
        from engine.core.errors import InvalidInput
        from engine.store.api_keys import parse_expiry

        if isinstance(value, datetime):
            return value
        try:
            return parse_expiry(str(value), utcnow())
        except InvalidInput as bad:  # said as a usage error, with the option's name
            self.fail(str(bad), param, None)


@key.command("create")
@click.option("--scope", required=True, type=click.Choice(SCOPES), help="What the key may do.")
@click.option("--name", default=None, help="Who or what holds the key, for `key list`.")
@click.option("--expires", type=Expiry(), default=None, help="30d, 12h, 2w, or 2027-01-31.")
@pass_ctx
def key_create(obj: Context, scope: str, name: str | None, expires: datetime | None) -> None:
    """Create a scoped key: search (read-only, safe in a browser), events (search and
    posting events) or admin (everything). The key is printed once, alone on the last line."""
    from engine.store import api_keys

    with obj.runtime.session() as session:
        created = api_keys.create(session, scope, name=name, expires_at=expires)
    info = created.info
    until = f"expires {_when(info.expires_at)}" if info.expires_at else "does not expire"
    label = f" ({info.name})" if info.name else ""
    click.echo(f"created key {info.id}{label}: {info.prefix}, scope {info.scope}, {until}")
    click.echo("it is shown once, now; only its hash is stored:")
    click.echo(created.key)


@key.command("list")
@pass_ctx
def key_list(obj: Context) -> None:
    """The scoped keys (never the keys themselves): prefix, name, scope, dates and state."""
    from engine.core.clock import utcnow
    from engine.store import api_keys

    with obj.runtime.session() as session:
        keys = api_keys.list_keys(session)
    if not keys:
        click.echo("no scoped keys (`recsearch key create --scope search` makes one)")
        return
    now = utcnow()
    header = (
        "id",
        "prefix",
        "scope",
        "state",
        "created",
        "expires",
        "revoked",
        "last used",
        "name",
    )
    rows = [
        (
            str(k.id),
            k.prefix,
            k.scope,
            k.state(now),
            _when(k.created_at),
            _when(k.expires_at),
            _when(k.revoked_at),
            _when(k.last_used_at),
            k.name or "",
        )
        for k in keys
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@key.command("revoke")
@click.argument("which")
@pass_ctx
def key_revoke(obj: Context, which: str) -> None:
    """Revoke a scoped key by id or prefix (from `key list`); every server refuses it within
    a few seconds. (The data dir's admin key is changed by replacing its file instead.)"""
    from engine.store import api_keys

    with obj.runtime.session() as session:
        info, revoked = api_keys.revoke(session, which)
    obj.runtime.api_keys.forget()
    if revoked:
        click.echo(
            f"revoked key {info.id} ({info.prefix}); every server refuses it within "
            f"{api_keys.CACHE_S:g} s"
        )
    else:
        click.echo(f"key {info.id} ({info.prefix}) was already revoked at {_when(info.revoked_at)}")


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%MZ")


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
