"""Commands about tuned encoders: `train --encoder` fine-tunes one (web.cli.models), these list,
promote and roll them back. A build embeds with the promoted encoder (or `build --encoder`);
servers encode with the encoder of the index they serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from web.cli.base import Context, cli, pass_ctx
from web.cli.jobs import run_as_job


def train_encoder(
    obj: Context,
    judgments: Path | None,
    from_events: bool,
    epochs: int,
    batch_size: int,
    promote: bool,
) -> None:
    """`recsearch train --encoder`: fine-tune on judgments, or on the log (clicked search
    results and the event history's same-visit pairs), or on both (--judgments F --from-events)."""
    from indexer.encoder_tuning import TuneOptions, TuneReport, tune_from_history
    from indexer.examples import read_judgments
    from indexer.progress import Progress

    runtime = obj.runtime
    rows = read_judgments(judgments) if judgments is not None else []
    options = TuneOptions(epochs=epochs, batch_size=batch_size)

    def work(progress: Progress) -> tuple[TuneReport, dict[str, Any]]:
        with runtime.session() as session:
            report = tune_from_history(
                runtime,
                session,
                judgments=rows,
                use_log=from_events or judgments is None,
                options=options,
                promote=promote,
                progress=progress,
            )
        return report, report.to_dict()

    params: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "promote": promote}
    if judgments is not None:
        params["judgments"] = str(judgments)
    report = run_as_job(obj, "train-encoder", params, work)
    sources = ", ".join(f"{n} from {source}" for source, n in report.sources.items())
    click.echo(
        f"encoder {report.version} ({report.name}): {report.pairs} pairs ({sources}), "
        f"{report.steps} steps on {report.device} in {report.tuning_seconds:.0f}s, loss "
        f"{report.first_loss:.3f} → {report.last_loss:.3f}; "
        + (
            "promoted: the next `recsearch build` embeds with it"
            if promote
            else f"not promoted: `recsearch encoder promote {report.version}`, or "
            f"`recsearch build --encoder {report.version}`"
        )
    )


@cli.group()
def encoder() -> None:
    """Tuned encoder versions: list, promote (what builds embed with), rollback."""


@encoder.command("list")
@pass_ctx
def encoder_list(obj: Context) -> None:
    """Every tuned encoder version, the promoted one marked."""
    from engine.index.encoder_store import EncoderStore

    store = EncoderStore.of(obj.runtime.settings)
    current = store.current_version()
    versions = store.versions()
    if not versions:
        click.echo(f"no tuned encoder: builds embed with {obj.runtime.settings.model_name()}")
        return
    for version in versions:
        report = store.manifest(version).get("report", {})
        click.echo(
            f"{'*' if version == current else ' '} {version}  {report.get('pairs', '?')} pairs, "
            f"{report.get('steps', '?')} steps, {report.get('tuning_seconds', '?')}s, "
            f"{(report.get('size_bytes') or 0) / 1e6:.0f} MB"
        )


@encoder.command("promote")
@click.argument("version")
@pass_ctx
def encoder_promote(obj: Context, version: str) -> None:
    """Make VERSION the encoder the next builds embed with (serving follows the index)."""
    from engine.index.encoder_store import EncoderStore

    EncoderStore.of(obj.runtime.settings).promote(version)
    click.echo(f"encoder {version} is promoted: run `recsearch build` to serve with it")


@encoder.command("rollback")
@pass_ctx
def encoder_rollback(obj: Context) -> None:
    """Promote the encoder that was promoted before the current one."""
    from engine.core.errors import NotFound
    from engine.index.encoder_store import EncoderStore

    store = EncoderStore.of(obj.runtime.settings)
    target = store.rollback_target()
    if target is None:
        raise NotFound("no earlier encoder version was promoted here")
    store.promote(target)
    click.echo(f"encoder {target} is promoted again: run `recsearch build` to serve with it")


@encoder.command("reencode-users")
@pass_ctx
def encoder_reencode_users(obj: Context) -> None:
    """Recompute users' taste vectors with the serving index's encoder, from the event log
    (servers do this on their own after the serving encoder changes)."""
    from engine.core.errors import NotReady
    from engine.users.taste import reencode_stale

    runtime = obj.runtime
    artifact = runtime.live.get_or_none()
    if artifact is None:
        raise NotReady("no index is published yet: run `recsearch build` first")
    space = artifact.model_name

    def report(done: int) -> None:
        if not obj.quiet:
            click.echo(f"  {done} users re-encoded", err=True)

    count = reencode_stale(runtime.sessions, runtime.settings, runtime.vectors, space, report)
    click.echo(f"{count} users' taste vectors re-encoded with {space}; every user is in its space")
