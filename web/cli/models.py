"""Commands about ranking models: train, promote, online experiments and offline evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from web.cli.base import Context, cli, pass_ctx, progress_bar
from web.cli.jobs import run_as_job

# indexer.encoder_tuning.TuneOptions.epochs, spelt out so that `--help` loads no torch
# (tests/web/test_cli_startup.py checks that the two agree).
TUNE_EPOCHS = 2


@cli.command()
@click.option(
    "--judgments",
    type=click.Path(path_type=Path),
    help="(query, item_id, grade) rows: JSONL, CSV or TSV.",
)
@click.option(
    "--from-events",
    is_flag=True,
    help="Learn from the event history by point-in-time replay (for histories logged without "
    "search impressions, e.g. an imported ratings log).",
)
@click.option(
    "--from-impressions",
    is_flag=True,
    help="Learn from logged search impressions and the clicks that name their request_id.",
)
@click.option("--promote", is_flag=True, help="Make the new model (encoder) live (promoted).")
@click.option(
    "--encoder",
    "tune",
    is_flag=True,
    help="Fine-tune the encoder instead, on --judgments, or on the log (clicked search results "
    "and same-visit item pairs), or both (--from-events too): a new encoder version.",
)
@click.option("--epochs", type=click.IntRange(1, 20), default=TUNE_EPOCHS, show_default=True)
@click.option("--batch-size", type=click.IntRange(2, 512), default=32, show_default=True)
@pass_ctx
def train(
    obj: Context,
    judgments: Path | None,
    from_events: bool,
    from_impressions: bool,
    promote: bool,
    tune: bool,
    epochs: int,
    batch_size: int,
) -> None:
    """Train the sigmoid ranker; save it as a model version (live with --promote).

    Without a source flag: logged impressions when some were clicked, else the event history.
    With --encoder: fine-tune the encoder (see `recsearch encoder --help`).
    Runs here, in the foreground, and is recorded in the job history (`recsearch jobs`).
    """
    if tune:
        if from_impressions:
            raise click.UsageError("--encoder learns from --judgments and --from-events")
        from web.cli.encoders import train_encoder

        train_encoder(obj, judgments, from_events, epochs, batch_size, promote)
        return
    from indexer.examples import read_judgments
    from indexer.job_run import train_result
    from indexer.progress import Progress
    from indexer.train import (
        TrainReport,
        default_source,
        train_from_events,
        train_from_impressions,
        train_from_judgments,
    )

    if sum([judgments is not None, from_events, from_impressions]) > 1:
        raise click.UsageError(
            "choose one of --judgments FILE, --from-events and --from-impressions"
        )
    runtime = obj.runtime
    source = "auto"
    if judgments is not None:
        source = "judgments"
    elif from_events or from_impressions:
        source = "events" if from_events else "impressions"

    def work(progress: Progress) -> tuple[TrainReport, dict[str, Any]]:
        with runtime.session() as session:
            if judgments is not None:
                _, report = train_from_judgments(
                    runtime, session, read_judgments(judgments), promote=promote, progress=progress
                )
                return report, train_result(report, source, f"judgments from {judgments}")
            chosen, why = source, f"source: {source}"
            if chosen == "auto":
                chosen, why = default_source(runtime, session)
                click.echo(why)
            train = train_from_events if chosen == "events" else train_from_impressions
            _, report = train(runtime, session, promote=promote, progress=progress)
        return report, train_result(report, chosen, why)

    params: dict[str, Any] = {"source": source, "promote": promote}
    if judgments is not None:
        params["judgments"] = str(judgments)
    report = run_as_job(obj, "train", params, work)
    click.echo(
        f"model {report.version}: {report.examples} examples ({report.positives} positive) "
        f"from {report.train_queries + report.validation_queries} queries/requests in "
        f"{report.train_seconds:.1f}s; held-out AUC {report.validation_auc:.3f}, "
        f"log loss {report.validation_log_loss:.3f}; "
        + ("promoted (live)" if promote else f"not live: `recsearch promote {report.version}`")
    )


@cli.command()
@click.argument("version")
@pass_ctx
def promote(obj: Context, version: str) -> None:
    """Make a trained model version live (servers pick it up without a restart)."""
    from engine.ranking.model_store import ModelStore

    ModelStore(obj.runtime.settings.model_dir).point_current_at(version)
    click.echo(f"model {version} is live")


@cli.group()
def experiment() -> None:
    """Online experiments: interleave a candidate model with the live one and count wins."""


@experiment.command("start")
@click.argument("candidate")
@click.option("--traffic", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@pass_ctx
def experiment_start(obj: Context, candidate: str, traffic: float) -> None:
    """Start interleaving CANDIDATE (a model version, or "latest") on a share of searches."""
    from engine.ranking import experiments
    from engine.ranking.model_store import ModelStore

    runtime = obj.runtime
    with runtime.write_session() as session:
        started = experiments.start(
            session, ModelStore(obj.runtime.settings.model_dir), candidate, traffic
        )
    click.echo(
        f"experiment {started.id}: {started.candidate} vs live {started.live} on "
        f"{started.traffic:.0%} of searches (servers pick it up within a second)"
    )


@experiment.command("status")
@click.argument("experiment_id", type=int, required=False)
@pass_ctx
def experiment_status(obj: Context, experiment_id: int | None) -> None:
    """An experiment's wins, losses, ties and p-value (default: the latest ones)."""
    from engine.ranking import experiments

    runtime = obj.runtime
    with runtime.session() as session:
        rating = obj.settings.positive_rating
        found = (
            [experiments.report(session, experiment_id, positive_rating=rating)]
            if experiment_id is not None
            else experiments.list_all(session, positive_rating=rating)
        )
    if not found:
        click.echo("no experiments")
    for e in found:
        click.echo(
            f"experiment {e.id} ({e.state}): {e.candidate} vs {e.live}, "
            f"{e.requests} interleaved requests; wins {e.wins}, losses {e.losses}, "
            f"ties {e.ties}; p = {e.p_value:.4g}"
        )


@experiment.command("stop")
@click.argument("experiment_id", type=int)
@click.option("--promote", is_flag=True, help="Make the candidate live as well.")
@pass_ctx
def experiment_stop(obj: Context, experiment_id: int, promote: bool) -> None:
    """Stop interleaving (with --promote: and make the candidate live)."""
    from engine.ranking import experiments
    from engine.ranking.model_store import ModelStore

    runtime = obj.runtime
    with runtime.write_session() as session:
        if promote:
            done = experiments.promote(
                session, ModelStore(obj.runtime.settings.model_dir), experiment_id
            )
        else:
            done = experiments.stop(session, experiment_id)
    click.echo(f"experiment {done.id} {done.state}")


@cli.group()
def evaluate() -> None:
    """Offline evaluation on public datasets, baselines in the same run."""


@evaluate.command("beir")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--promote", is_flag=True, help="Make the model trained on the train split live.")
@click.option(
    "--encoder-epochs",
    type=click.IntRange(0, 20),
    default=TUNE_EPOCHS,
    show_default=True,
    help="Then fine-tune the encoder on the train split for this many epochs, build with it "
    "and measure again (encoder_tuned); 0 skips it.",
)
@pass_ctx
def evaluate_beir_cmd(
    obj: Context, folder: Path, out: Path | None, promote: bool, encoder_epochs: int
) -> None:
    """NDCG@10 / Recall@100 on the test split: dense, dense_ann, lexical, hybrid, reranked;
    with the base encoder, then with one fine-tuned on the train split."""
    from indexer.encoder_tuning import TuneOptions
    from indexer.evaluate import evaluate_beir, print_table

    tune = TuneOptions(epochs=encoder_epochs) if encoder_epochs else None
    with progress_bar(not obj.quiet) as progress:
        result = evaluate_beir(obj.runtime, folder, promote=promote, tune=tune, progress=progress)
    click.echo(print_table(result))
    click.echo(f"training {result['train_seconds']:.1f}s, total {result['total_seconds']:.1f}s")
    tuned = result.get("encoder_tuned")
    if tuned:
        click.echo(print_table({**tuned, "dataset": "encoder_tuned", "queries": result["queries"]}))
        click.echo(f"encoder tuning {tuned['tuning_s']:.1f}s ({tuned['encoder']['name']})")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        click.echo(f"wrote {out}")


@evaluate.command("movielens")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option(
    "--encoder-epochs",
    type=click.IntRange(0, 20),
    default=0,
    show_default=True,
    help="Then fine-tune the encoder on same-visit pairs from the training history for this "
    "many epochs, build with it, record the history again and measure again (encoder_tuned; "
    "about half an hour on 2 cores).",
)
@click.option(
    "--encoder-pairs",
    type=click.IntRange(1),
    default=4000,
    show_default=True,
    help="At most this many pairs tune the encoder.",
)
@click.option(
    "--split",
    type=click.Choice(["test", "validation"]),
    default="test",
    show_default=True,
    help="validation: hold out each user's last liked movie before the test one, from the "
    "history alone (for choosing settings without looking at the test movies).",
)
@pass_ctx
def evaluate_movielens_cmd(
    obj: Context,
    folder: Path,
    out: Path | None,
    encoder_epochs: int,
    encoder_pairs: int,
    split: str,
) -> None:
    """HR@10 / NDCG@10, leave-last-out: popularity, als, retrieval, reranked; with
    --encoder-epochs, again with an encoder fine-tuned on the training history."""
    from indexer.encoder_tuning import TuneOptions
    from indexer.evaluate import print_table
    from indexer.evaluate_movielens import evaluate_movielens

    tune = TuneOptions(epochs=encoder_epochs) if encoder_epochs else None
    with progress_bar(not obj.quiet) as progress:
        result = evaluate_movielens(
            obj.runtime,
            folder,
            tune=tune,
            tune_pairs=encoder_pairs,
            validation=split == "validation",
            progress=progress,
        )
    click.echo(print_table(result))
    click.echo(
        f"reranked / best baseline NDCG@10: {result['reranked_over_best_baseline']}; "
        f"training {result['train_seconds']:.1f}s, total {result['total_seconds']:.1f}s"
    )
    tuned = result.get("encoder_tuned")
    if tuned:
        click.echo(print_table({**tuned, "dataset": "encoder_tuned", "users": result["users"]}))
        click.echo(
            f"encoder tuning {tuned['tuning_s']:.1f}s on {tuned['pairs']} pairs; reranked / "
            f"best baseline NDCG@10: {tuned['reranked_over_best_baseline']}"
        )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        click.echo(f"wrote {out}")
