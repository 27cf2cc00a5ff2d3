"""Commands about the published index and what it serves: build, search, status."""

from __future__ import annotations

from typing import Any

import click

from web.cli.base import Context, cli, pass_ctx
from web.cli.jobs import run_as_job


@cli.command()
@click.option("--if-stale", is_flag=True, help="Skip when the catalog has not changed.")
@click.option(
    "--index-type",
    help="Override RECSEARCH_INDEX_TYPE: auto, flat, hnsw, ivf or a FAISS factory string.",
)
@click.option(
    "--ray",
    "ray_address",
    metavar="ADDRESS",
    help="Embed on the Ray cluster at host:port (overrides RECSEARCH_RAY_ADDRESS); run it "
    "on a node of that cluster.",
)
@click.option(
    "--encoder",
    metavar="VERSION",
    help="Embed with this tuned encoder version (default: the promoted one, else "
    "RECSEARCH_MODEL; see `recsearch encoder list`).",
)
@pass_ctx
def build(
    obj: Context,
    if_stale: bool,
    index_type: str | None,
    ray_address: str | None,
    encoder: str | None,
) -> None:
    """Embed the catalog, build the ANN index, measure recall and publish a new version.

    Runs here, in the foreground, and is recorded in the job history (`recsearch jobs`)."""
    from indexer.build import BuildReport
    from indexer.build import build as run_build
    from indexer.job_run import build_result
    from indexer.progress import Progress

    runtime = obj.runtime
    changes: dict[str, str] = {}
    if index_type:
        changes["index_type"] = index_type
    if ray_address:
        changes["ray_address"] = ray_address
    settings = runtime.settings.replace(**changes) if changes else runtime.settings

    def work(progress: Progress) -> tuple[BuildReport, dict[str, Any]]:
        with runtime.session() as session:
            report = run_build(
                runtime,
                session,
                if_stale=if_stale,
                settings=settings,
                encoder=encoder,
                progress=progress,
            )
        return report, build_result(report)

    params: dict[str, Any] = {"if_stale": True} if if_stale else {}
    if encoder:
        params["encoder"] = encoder
    report = run_as_job(obj, "build", {**params, **changes}, work)
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
    where = report.embedding
    if where.get("where") == "ray":
        click.echo(f"embedded on Ray at {where['address']} by {where['actors']} actor(s)")
    _say_stale_tastes(obj, report.version)


# What to do about taste vectors a new serving encoder leaves stale (engine.users.taste).
REENCODE_HINT = "running servers re-encode them, or run `recsearch encoder reencode-users`"


def _say_stale_tastes(obj: Context, version: str) -> None:
    """After the serving index changed: how many taste vectors its encoder leaves stale."""
    from engine.users.taste import taste_counts

    runtime = obj.runtime
    name = str(runtime.live.store.manifest(version)["model"]["name"])
    with runtime.session() as session:
        _, stale = taste_counts(session, name)
    if stale:
        click.echo(
            f"{stale} users' taste vectors are in another encoder's space than {name}'s: "
            + REENCODE_HINT
        )


# The CLI's name for a SearchQuery field where it is not --field-name.
OPTION_OF = {"q": "QUERY", "user_id": "--user", "context_items": "--context"}
# What --similar-to takes (SimilarQuery's fields).
SIMILAR_FIELDS = ("k", "user_id", "explain", "timings")


@cli.command()
@click.argument("query", required=False, default="")
@click.option("-k", default=10, show_default=True, help="How many results.")
@click.option("--offset", metavar="N", help="Skip N results (the next page: next_offset).")
@click.option("--category", help="Only items of this category.")
@click.option(
    "--filters",
    metavar="JSON",
    help='Item fields and attributes, as the API takes them: \'{"country": "Japan"}\', '
    '\'{"cost": {"gte": 50, "lte": 100}}\', \'{"tags": {"any": ["ski"]}}\'.',
)
@click.option("--diversity", metavar="0..1", help="Maximal marginal relevance (0 = off).")
@click.option("--max-per-category", metavar="N", help="At most N results per category.")
@click.option("--user", "user_id", help="Personalize for this user id.")
@click.option(
    "--context", "context_items", multiple=True, help="An item id of the session (repeat)."
)
@click.option("--exclude-seen", metavar="purchased|all|none", help="What a user saw to leave out.")
@click.option(
    "--similar-to",
    metavar="ID",
    help="Items like item ID (the API's /v1/items/ID/similar): with -k, --user, --explain.",
)
@click.option("--facets", metavar="A,B", help="Count the results' values of these fields.")
@click.option("--highlight", is_flag=True, help="Mark the query's terms in title and a snippet.")
@click.option("--fields", metavar="A,B", help="The fields each hit carries in --json.")
@click.option("--no-typo-tolerance", is_flag=True, help="Do not correct misspelt query words.")
@click.option("--explain", is_flag=True, help="Show each feature's contribution to the score.")
@click.option("--timings", is_flag=True, help="Per-stage timings in --json.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON the API would return.")
@pass_ctx
def search(obj: Context, query: str, as_json: bool, similar_to: str | None, **options: Any) -> None:
    """Search from the terminal and print a table (without QUERY: recommend for --user or
    --context, else popular items). Every option is the API's search parameter of that
    name, validated the same way; --json prints the API's response."""
    from engine.core.contract import check_id, validate
    from engine.search.request import SearchQuery, SimilarQuery

    runtime = obj.runtime
    raw = search_params(query, options)
    context = {"max_k": runtime.settings.max_k}
    if similar_to is None:
        request = validate(SearchQuery, raw, context=context).to_request()
    else:
        other = [
            OPTION_OF.get(n, "--" + n.replace("_", "-")) for n in raw if n not in SIMILAR_FIELDS
        ]
        if other:
            raise click.UsageError(
                f"--similar-to takes -k, --user, --explain and --timings, not {', '.join(other)}"
            )
        similar = validate(SimilarQuery, raw, context=context)
        request = similar.to_request(check_id(similar_to, "item_id"))
    response = runtime.search(request)
    if as_json:
        click.echo(response.model_dump_json(indent=1))
    else:
        show_results(response)


def search_params(query: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options a user gave, as the API's search parameters (the rest take its defaults)."""
    raw: dict[str, Any] = {"q": query or None, "k": options.pop("k")}
    raw["context_items"] = list(options.pop("context_items")) or None
    raw["typo_tolerance"] = False if options.pop("no_typo_tolerance") else None
    raw.update({name: value or None for name, value in options.items()})
    return {name: value for name, value in raw.items() if value is not None}


def show_results(response: Any) -> None:
    click.echo(f"{'#':>3}  {'score':>6}  {'category':<12}  {'id':<34}  title")
    for rank, hit in enumerate(response.results, start=1):
        click.echo(
            f"{rank:>3}  {hit.score:>6.3f}  {(hit.category or '-')[:12]:<12}  {hit.id[:34]:<34}  "
            f"{hit.title}"
        )
        for name, marked in (hit.highlights or {}).items():
            click.echo(f"{'':>13}{name}: {marked}")
        if hit.explanation:
            parts = sorted(hit.explanation.contributions.items(), key=lambda kv: -abs(kv[1]))
            shown = ", ".join(f"{name} {value:+.2f}" for name, value in parts if value)
            click.echo(
                f"{'':>13}logit {hit.explanation.logit:+.2f} = bias "
                f"{hit.explanation.bias:+.2f}, {shown}"
            )
    at_least = "at least " if response.total_relation == "gte" else ""
    more = f"; next page: --offset {response.next_offset}" if response.next_offset else ""
    click.echo(
        f"index {response.index_version}, {response.mode}, {response.took_ms:.1f} ms; "
        f"{at_least}{response.total} results{more}"
    )
    for field, counts in (response.facets or {}).items():
        click.echo(f"facet {field}: " + ", ".join(f"{v} {n}" for v, n in counts.items()))
    for field, stats in (response.facet_stats or {}).items():
        click.echo(f"facet {field}: " + ", ".join(f"{s} {v:g}" for s, v in stats.items()))


@cli.command()
@click.argument("version")
@pass_ctx
def rollback(obj: Context, version: str) -> None:
    """Serve an earlier (or a later) published index version; servers follow within a poll."""
    from engine.core.contract import validate
    from engine.index.schemas import VersionBody

    version = validate(VersionBody, {"version": version}).version  # the admin API's checks
    obj.runtime.live.store.point_current_at(version)
    click.echo(f"index {version} is current")
    _say_stale_tastes(obj, version)


@cli.command()
@pass_ctx
def status(obj: Context) -> None:
    """Show the database, the catalog size, the published index and the live model."""
    from sqlalchemy import func, select

    from engine.encoder.embedder import describe_encoder
    from engine.index.artifact import IndexStore
    from engine.index.status import index_status
    from engine.ranking.model_store import ModelStore
    from engine.store.db import current_revision
    from engine.store.models import Item
    from engine.users.taste import taste_counts

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
        f"index      {index.version}: {index.items} items, {index.factory} "
        f"{index.params}, recall@10 {index.recall_at_10}, built {index.built_at}, "
        f"{index.size_bytes / 1048576:.1f} MiB; {index.delta_items} items pending "
        "in the delta"
    )
    where = index.vector_store or {"backend": "faiss"}
    if where["backend"] == "milvus":
        click.echo(
            f"vectors    Milvus {where['uri']}: {where['collection']} (alias {where['alias']})"
        )
    built = store.manifest(index.version)
    click.echo(f"encoder    {describe_encoder(runtime.settings.encoder, built)}")
    with runtime.session() as session:
        tasted, stale = taste_counts(session, str(built["model"]["name"]))
    click.echo(
        f"users      {tasted} with a taste vector"
        + (f", {stale} of them in another encoder's space: {REENCODE_HINT}" if stale else "")
    )
    click.echo(f"versions   {', '.join(store.versions())}")
    live = ModelStore(runtime.settings.model_dir).current_version()
    click.echo(f"model      {live or 'prior (hand-set weights; train one with `recsearch train`)'}")
