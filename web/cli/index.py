"""Commands about the published index and what it serves: build, search, status."""

from __future__ import annotations

import click

from web.cli.base import (
    Context,
    cli,
    pass_ctx,
    progress_bar,
)


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
@pass_ctx
def build(obj: Context, if_stale: bool, index_type: str | None, ray_address: str | None) -> None:
    """Embed the catalog, build the ANN index, measure recall and publish a new version."""
    from indexer.build import build as run_build

    runtime = obj.runtime
    changes: dict[str, str] = {}
    if index_type:
        changes["index_type"] = index_type
    if ray_address:
        changes["ray_address"] = ray_address
    settings = runtime.settings.replace(**changes) if changes else runtime.settings
    with runtime.session() as session, progress_bar(not obj.quiet) as progress:
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
    where = report.embedding
    if where.get("where") == "ray":
        click.echo(f"embedded on Ray at {where['address']} by {where['actors']} actor(s)")


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
    obj: Context,
    query: str,
    k: int,
    category: str | None,
    user_id: str | None,
    context_items: tuple[str, ...],
    explain: bool,
    as_json: bool,
) -> None:
    """Search from the terminal and print a table ("" as QUERY recommends for --user)."""
    from engine.core.contract import validate
    from engine.search.request import SearchQuery

    runtime = obj.runtime
    raw = {"q": query, "k": k, "category": category, "user_id": user_id}
    raw.update(context_items=list(context_items), explain=explain)
    search = validate(SearchQuery, raw, context={"max_k": runtime.settings.max_k})
    response = runtime.search(search.to_request())
    if as_json:
        click.echo(response.model_dump_json(indent=1))
        return
    click.echo(f"{'#':>3}  {'score':>6}  {'category':<12}  {'id':<34}  title")
    for rank, hit in enumerate(response.results, start=1):
        click.echo(
            f"{rank:>3}  {hit.score:>6.3f}  {(hit.category or '-')[:12]:<12}  {hit.id[:34]:<34}  "
            f"{hit.title}"
        )
        if hit.explanation:
            parts = sorted(hit.explanation.contributions.items(), key=lambda kv: -abs(kv[1]))
            shown = ", ".join(f"{name} {value:+.2f}" for name, value in parts if value)
            click.echo(
                f"{'':>13}logit {hit.explanation.logit:+.2f} = bias "
                f"{hit.explanation.bias:+.2f}, {shown}"
            )
    click.echo(f"index {response.index_version}, {response.mode}, {response.took_ms:.1f} ms")


@cli.command()
@click.argument("version")
@pass_ctx
def rollback(obj: Context, version: str) -> None:
    """Serve an earlier (or a later) published index version; servers follow within a poll."""
    obj.runtime.live.store.point_current_at(version)
    click.echo(f"index {version} is current")


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
    click.echo(f"versions   {', '.join(store.versions())}")
    live = ModelStore(runtime.settings.model_dir).current_version()
    click.echo(f"model      {live or 'prior (hand-set weights; train one with `recsearch train`)'}")
