"""The `recsearch` command line, one module per area: catalog (ingest, events, delete, import,
db), index (build, search, rollback, status), models (train, promote, experiment, evaluate),
encoders (train --encoder, encoder list/promote/rollback), jobs (the job history) and server
(serve, worker, key). It sits above web/ and indexer/: `serve` runs the web app, the rest call
jobs.

Importing it loads click and the command tree only (tests/web/test_cli_startup.py): each
command imports what it uses when it runs, so `recsearch --help` takes a fraction of a second
and `recsearch search` loads the engine but not Flask.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from web.cli import (  # noqa: F401  (each adds its commands)
    catalog,
    encoders,
    index,
    jobs,
    models,
    server,
)
from web.cli.base import Context, cli

__all__ = ["Context", "cli", "main"]


def main(args: Sequence[str] | None = None, obj: Context | None = None) -> None:
    """The `recsearch` command: an engine error prints `error: ...` and exits 2, as a usage
    error does. args and obj (a context with a shared runtime) are for tests."""
    try:
        cli.main(args, obj=obj, standalone_mode=True)
    except Exception as exc:
        from engine.core.errors import RecsearchError  # loaded already when exc is one

        if not isinstance(exc, RecsearchError):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
