"""The `recsearch` command line, one module per area: catalog (ingest, events, delete, import,
db), index (build, search, rollback, status), models (train, promote, experiment, evaluate)
and server (serve, worker, key). It sits above web/ and indexer/: `serve` runs the web app,
the rest call jobs.
"""

from __future__ import annotations

import sys

import click

from engine.core.errors import RecsearchError
from web.cli import catalog, index, models, server  # noqa: F401  (each adds its commands)
from web.cli.base import Context, cli

__all__ = ["Context", "cli", "main"]


def main() -> None:
    try:
        cli(standalone_mode=True)
    except RecsearchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
