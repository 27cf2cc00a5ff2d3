"""The `recsearch` command line: ingest, delete, build, search, serve, db upgrade, status."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from engine.config import Settings
from engine.errors import InvalidInput, RecsearchError
from engine.runtime import Runtime
from indexer.progress import Progress

MAX_PROBLEMS_SHOWN = 50


class _Context:
    def __init__(self, settings: Settings, quiet: bool, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.quiet = quiet
        self._runtime = runtime

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = Runtime(self.settings)
        return self._runtime


pass_ctx = click.make_pass_decorator(_Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
        ctx.obj = _Context(Settings.from_env(), quiet)


@contextmanager
def _bar(enabled: bool) -> Iterator[Progress]:
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


@cli.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(obj: _Context) -> None:
    """Apply pending schema migrations (every command also does this on its own)."""
    from engine.db import make_engine, upgrade

    engine = make_engine(obj.settings)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"database is up to date (revision {after})")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after}")


def _load_options(what: str) -> Any:
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


def _rejects_path(
    obj: _Context, file: Path, skip_invalid: bool, rejects: Path | None
) -> Path | None:
    if skip_invalid and rejects is None:
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        return obj.settings.data_dir / "rejects" / f"{file.stem}.{stamp}.rejects.jsonl"
    return rejects


def _finish_load(file: Path, report: Any, summary: str) -> None:
    """Print problems; exit 1 when nothing was accepted, else the summary and rejects file."""
    _show_problems(report.problems)
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


@cli.command()
@_load_options("rows")
@pass_ctx
def ingest(obj: _Context, file: Path, skip_invalid: bool, rejects: Path | None) -> None:
    """Validate a JSONL or CSV catalog and upsert its items (all or nothing by default)."""
    from indexer.ingest import ingest as run_ingest

    rejects = _rejects_path(obj, file, skip_invalid, rejects)
    started = time.perf_counter()
    runtime = obj.runtime
    with runtime.write_session() as session, _bar(not obj.quiet) as progress:
        report = run_ingest(
            runtime,
            session,
            file,
            skip_invalid=skip_invalid,
            rejects_path=rejects,
            progress=progress,
        )
    took = time.perf_counter() - started
    c = report.counts
    _finish_load(
        file,
        report,
        f"{file}: {report.rows} rows in {took:.1f}s: {c.inserted} inserted, {c.updated} updated, "
        f"{c.unchanged} unchanged, {report.rejected} rejected",
    )


@cli.command()
@_load_options("events")
@pass_ctx
def events(obj: _Context, file: Path, skip_invalid: bool, rejects: Path | None) -> None:
    """Load a history log of events (JSONL or CSV) and update users' features."""
    from indexer.events import load_events

    rejects = _rejects_path(obj, file, skip_invalid, rejects)
    started = time.perf_counter()
    runtime = obj.runtime
    with runtime.write_session() as session, _bar(not obj.quiet) as progress:
        report = load_events(
            runtime,
            session,
            file,
            skip_invalid=skip_invalid,
            rejects_path=rejects,
            progress=progress,
        )
    took = time.perf_counter() - started
    e = report.events
    rate = e.received / took if took > 0 else 0.0
    _finish_load(
        file,
        report,
        f"{file}: {report.rows} rows in {took:.1f}s ({rate:.0f} events/s): {e.recorded} recorded, "
        f"{e.duplicates} duplicates, {report.rejected} rejected; {e.users} users updated",
    )


def _show_problems(problems: list[Any]) -> None:
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        click.echo(f"  {problem}", err=True)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        click.echo(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more", err=True)


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--missing-ok", is_flag=True, help="Delete the ids that exist; ignore the rest.")
@pass_ctx
def delete(obj: _Context, ids: tuple[str, ...], missing_ok: bool) -> None:
    """Delete items by id (all or nothing unless --missing-ok)."""
    from engine.catalog import delete_items

    with obj.runtime.write_session() as session:
        missing = delete_items(session, list(ids))
        if missing and missing_ok:
            present = [i for i in ids if i not in missing]
            if present:
                delete_items(session, present)
    if missing and not missing_ok:
        raise InvalidInput(f"no such item(s): {', '.join(map(repr, missing))}; nothing deleted")
    click.echo(f"deleted {len(ids) - len(missing)} item(s)")
    click.echo("they stop showing in search results now; run `recsearch build` to compact")


@cli.command()
@click.option("--if-stale", is_flag=True, help="Skip when the catalog has not changed.")
@click.option(
    "--index-type",
    help="Override RECSEARCH_INDEX_TYPE: auto, flat, hnsw, ivf or a FAISS factory string.",
)
@pass_ctx
def build(obj: _Context, if_stale: bool, index_type: str | None) -> None:
    """Embed the catalog, build the ANN index, measure recall and publish a new version."""
    from indexer.build import build as run_build

    runtime = obj.runtime
    settings = runtime.settings.replace(index_type=index_type) if index_type else runtime.settings
    settings.validate()
    with runtime.session() as session, _bar(not obj.quiet) as progress:
        report = run_build(
            runtime, session, if_stale=if_stale, settings=settings, progress=progress
        )
    if report.skipped:
        click.echo(f"index {report.version} is up to date ({report.item_count} items); not rebuilt")
        return
    click.echo(
        f"published index {report.version}: {report.item_count} items, {report.factory}"
        f"{' ' + str(report.params) if report.params else ''}, "
        f"recall@10 {report.recall_at_10:.3f}, "
        f"built in {report.build_seconds:.1f}s ({report.embedded} embedded at "
        f"{report.items_per_second:.0f} items/s, {report.reused} reused)"
    )


@cli.command()
@click.argument("query")
@click.option("-k", default=10, show_default=True, help="How many results.")
@click.option("--category", help="Only items of this category.")
@click.option("--user", "user_id", help="Personalize for this user id.")
@click.option(
    "--context", "context_items", multiple=True, help="An item id of the session (repeat)."
)
@click.option("--explain", is_flag=True, help="Show each feature's contribution to the score.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON the API would return.")
@pass_ctx
def search(
    obj: _Context,
    query: str,
    k: int,
    category: str | None,
    user_id: str | None,
    context_items: tuple[str, ...],
    explain: bool,
    as_json: bool,
) -> None:
    """Search from the terminal and print a table ("" as QUERY recommends for --user)."""
    from engine.contract import validate
    from engine.schemas import SearchQuery, search_json

    runtime = obj.runtime
    raw = {"q": query, "k": k, "category": category, "user_id": user_id}
    raw.update(context_items=list(context_items), explain=explain)
    search = validate(SearchQuery, raw, context={"max_k": runtime.settings.max_k})
    with runtime.session() as session:
        response = runtime.searcher.search(session, search.to_request())
    if as_json:
        body = search_json(response, explain=explain)
        click.echo(json.dumps(body, indent=1, ensure_ascii=False))
        return
    click.echo(f"{'#':>3}  {'score':>6}  {'category':<12}  {'id':<34}  title")
    for rank, hit in enumerate(response.results, start=1):
        click.echo(
            f"{rank:>3}  {hit.score:>6.3f}  {(hit.category or '-')[:12]:<12}  {hit.id[:34]:<34}  "
            f"{hit.title}"
        )
        if hit.explanation:
            parts = sorted(hit.explanation["contributions"].items(), key=lambda kv: -abs(kv[1]))
            shown = ", ".join(f"{name} {value:+.2f}" for name, value in parts if value)
            click.echo(
                f"{'':>13}logit {hit.explanation['logit']:+.2f} = bias "
                f"{hit.explanation['bias']:+.2f}, {shown}"
            )
    click.echo(f"index {response.index_version}, {response.mode}, {response.took_ms:.1f} ms")


@cli.group("import")
def import_() -> None:
    """Turn public datasets into catalog items (and events)."""


@import_.command("beir")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@pass_ctx
def import_beir_cmd(obj: _Context, folder: Path) -> None:
    """A BEIR folder's corpus.jsonl as items (queries and qrels are read by evaluate/train)."""
    from indexer.evaluate import import_beir

    changed = import_beir(obj.runtime, folder)
    click.echo(f"{folder}: {changed} items inserted or updated; run `recsearch build` next")


@import_.command("movielens")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@pass_ctx
def import_movielens_cmd(obj: _Context, folder: Path) -> None:
    """movies.csv (+ tags.csv) as items and ratings.csv as rating events."""
    import tempfile

    from engine.catalog import upsert_items
    from indexer.datasets import movielens_items, movielens_ratings
    from indexer.events import load_events

    items = movielens_items(folder)
    with obj.runtime.write_session() as session:
        changed = sum(
            upsert_items(session, items[i : i + 1000]).changed for i in range(0, len(items), 1000)
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ratings.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in movielens_ratings(folder)))
        with obj.runtime.write_session() as session, _bar(not obj.quiet) as progress:
            report = load_events(obj.runtime, session, path, progress=progress)
    click.echo(
        f"{folder}: {len(items)} movies ({changed} changed), {report.events.recorded} ratings "
        f"recorded ({report.events.duplicates} already there)"
    )


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
@click.option("--promote", is_flag=True, help="Make the new model live.")
@pass_ctx
def train(
    obj: _Context, judgments: Path | None, from_events: bool, from_impressions: bool, promote: bool
) -> None:
    """Train the sigmoid ranker; save it as a model version (live with --promote).

    Without a source flag: logged impressions when some were clicked, else the event history.
    """
    from indexer.train import (
        default_source,
        read_judgments,
        train_from_events,
        train_from_impressions,
        train_from_judgments,
    )

    if sum([judgments is not None, from_events, from_impressions]) > 1:
        raise click.UsageError(
            "choose one of --judgments FILE, --from-events and --from-impressions"
        )
    runtime = obj.runtime
    with runtime.session() as session, _bar(not obj.quiet) as progress:
        if judgments is None and not from_events and not from_impressions:
            source, why = default_source(runtime, session)
            click.echo(why)
            from_events = source == "events"
        if from_events:
            _, report = train_from_events(runtime, session, promote=promote, progress=progress)
        elif judgments is None:
            _, report = train_from_impressions(runtime, session, promote=promote, progress=progress)
        else:
            _, report = train_from_judgments(
                runtime, session, read_judgments(judgments), promote=promote, progress=progress
            )
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
def promote(obj: _Context, version: str) -> None:
    """Make a trained model version live (servers pick it up without a restart)."""
    from engine.model_store import ModelStore

    ModelStore(obj.settings.model_dir).point_current_at(version)
    click.echo(f"model {version} is live")


@cli.group()
def experiment() -> None:
    """Online experiments: interleave a candidate model with the live one and count wins."""


@experiment.command("start")
@click.argument("candidate")
@click.option("--traffic", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@pass_ctx
def experiment_start(obj: _Context, candidate: str, traffic: float) -> None:
    """Start interleaving CANDIDATE (a model version, or "latest") on a share of searches."""
    from engine import experiments
    from engine.model_store import ModelStore

    runtime = obj.runtime
    with runtime.write_session() as session:
        started = experiments.start(session, ModelStore(obj.settings.model_dir), candidate, traffic)
    click.echo(
        f"experiment {started['id']}: {started['candidate']} vs live {started['live']} on "
        f"{started['traffic']:.0%} of searches (servers pick it up within a second)"
    )


@experiment.command("status")
@click.argument("experiment_id", type=int, required=False)
@pass_ctx
def experiment_status(obj: _Context, experiment_id: int | None) -> None:
    """An experiment's wins, losses, ties and p-value (default: the latest ones)."""
    from engine import experiments

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
            f"experiment {e['id']} ({e['state']}): {e['candidate']} vs {e['live']}, "
            f"{e['requests']} interleaved requests; wins {e['wins']}, losses {e['losses']}, "
            f"ties {e['ties']}; p = {e['p_value']:.4g}"
        )


@experiment.command("stop")
@click.argument("experiment_id", type=int)
@click.option("--promote", is_flag=True, help="Make the candidate live as well.")
@pass_ctx
def experiment_stop(obj: _Context, experiment_id: int, promote: bool) -> None:
    """Stop interleaving (with --promote: and make the candidate live)."""
    from engine import experiments
    from engine.model_store import ModelStore

    runtime = obj.runtime
    with runtime.write_session() as session:
        if promote:
            done = experiments.promote(session, ModelStore(obj.settings.model_dir), experiment_id)
        else:
            done = experiments.stop(session, experiment_id)
    click.echo(f"experiment {done['id']} {done['state']}")


@cli.group()
def evaluate() -> None:
    """Offline evaluation on public datasets, baselines in the same run."""


@evaluate.command("beir")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--promote", is_flag=True, help="Make the model trained on the train split live.")
@pass_ctx
def evaluate_beir_cmd(obj: _Context, folder: Path, out: Path | None, promote: bool) -> None:
    """NDCG@10 / Recall@100 on the test split: dense, dense_ann, lexical, hybrid, reranked."""
    from indexer.evaluate import evaluate_beir, print_table

    with _bar(not obj.quiet) as progress:
        result = evaluate_beir(obj.runtime, folder, promote=promote, progress=progress)
    click.echo(print_table(result))
    click.echo(f"training {result['train_seconds']:.1f}s, total {result['total_seconds']:.1f}s")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        click.echo(f"wrote {out}")


@evaluate.command("movielens")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), help="Write the JSON report here.")
@pass_ctx
def evaluate_movielens_cmd(obj: _Context, folder: Path, out: Path | None) -> None:
    """HR@10 / NDCG@10, leave-last-out: popularity, als, retrieval, reranked."""
    from indexer.evaluate import evaluate_movielens, print_table

    with _bar(not obj.quiet) as progress:
        result = evaluate_movielens(obj.runtime, folder, progress=progress)
    click.echo(print_table(result))
    click.echo(
        f"reranked / best baseline NDCG@10: {result['reranked_over_best_baseline']}; "
        f"training {result['train_seconds']:.1f}s, total {result['total_seconds']:.1f}s"
    )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        click.echo(f"wrote {out}")


@cli.command()
@pass_ctx
def status(obj: _Context) -> None:
    """Show the database, the catalog size, the published index and the live model."""
    from sqlalchemy import func, select

    from engine.db import current_revision
    from engine.embedder import describe_encoder
    from engine.index_store import IndexStore
    from engine.model_store import ModelStore
    from engine.models import Item
    from engine.status import index_status

    runtime = obj.runtime
    store = IndexStore(runtime.settings.index_dir)
    with runtime.session() as session:
        n_items = session.scalar(select(func.count()).select_from(Item))
        index = index_status(store, session)
    click.echo(f"database   {runtime.db.url.render_as_string(hide_password=True)}")
    click.echo(f"schema     {current_revision(runtime.db)}")
    click.echo(f"items      {n_items}")
    if index is None:
        click.echo("index      none published: run `recsearch build`")
        return
    click.echo(
        f"index      {index['version']}: {index['items']} items, {index['factory']} "
        f"{index['params']}, recall@10 {index['recall_at_10']}, built {index['built_at']}, "
        f"{index['size_bytes'] / 1048576:.1f} MiB; {index['delta_items']} items pending "
        "in the delta"
    )
    where = index["vector_store"]
    if where["backend"] == "milvus":
        click.echo(
            f"vectors    Milvus {where['uri']}: {where['collection']} (alias {where['alias']})"
        )
    built = store.manifest(index["version"])
    click.echo(f"encoder    {describe_encoder(runtime.settings.encoder, built)}")
    click.echo(f"versions   {', '.join(store.versions())}")
    live = ModelStore(runtime.settings.model_dir).current_version()
    click.echo(f"model      {live or 'prior (hand-set weights; train one with `recsearch train`)'}")


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
def serve(obj: _Context, host: str, port: int, workers: int, threads: int, dev: bool) -> None:
    """Serve the HTTP API: gunicorn with N workers; SIGTERM drains in-flight requests."""
    # The one place the CLI reaches into web/: serving is what this command is for.
    from engine.secrets import api_key
    from web.auth import open_areas
    from web.server import LOCAL_HOSTS, encoder_threads, pool_threads, run, tune_process

    settings = obj.settings
    if settings.vector_store == "milvus" and workers > 1 and not dev:
        from engine.config import is_lite_uri

        if is_lite_uri(settings.milvus_target):
            # Milvus Lite locks its folder to one process: the second worker could not open it.
            raise click.UsageError(
                f"Milvus Lite ({settings.milvus_target}) serves one process: use --workers 1, "
                "or set RECSEARCH_MILVUS_URI to a Milvus server (http://host:19530) for more"
            )
    api_key(settings)  # created once here, not raced by the workers
    opened = ", ".join(sorted(open_areas(settings, host in LOCAL_HOSTS))) or "nothing"
    if dev:
        from web import create_app

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
def key(obj: _Context) -> None:
    """Print the API key (generated into the data dir on first use)."""
    from engine.secrets import api_key

    click.echo(api_key(obj.settings))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except RecsearchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
