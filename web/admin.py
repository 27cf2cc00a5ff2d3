"""The admin API (/admin/api): status, background rebuilds and training, jobs, rollback.
Every route needs the API key."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, current_app
from flask.typing import ResponseReturnValue

from engine.catalog.items import get_item
from engine.catalog.schemas import ItemOut
from engine.core.contract import check_id
from engine.index.schemas import IndexVersionOut, VersionBody
from engine.index.status import index_status
from engine.ranking import experiments, rule_store
from engine.ranking.model_store import ModelStore
from engine.ranking.ranker import LinearRanker
from engine.ranking.schemas import (
    ExperimentIn,
    ExperimentList,
    ExperimentOut,
    ModelInfo,
    ModelVersionOut,
    PromoteBody,
    RuleDeleted,
    RuleIn,
    RuleList,
    RuleOut,
)
from engine.search.request import SearchQuery, SearchRequest
from engine.search.response import SearchOut
from engine.users.profile import recent_events, user_profile
from indexer.jobs import JobRunner
from indexer.schemas import Job, JobList, TrainBody, TrainEncoderBody
from web import latency
from web.auth import require_admin
from web.contract import body, operation, query, respond
from web.extensions import runtime_of
from web.metrics import observe_search
from web.schemas import AdminItem, AdminStatus, AdminUser, EmptyBody

log = logging.getLogger(__name__)
bp = Blueprint("admin_api", __name__, url_prefix="/admin/api")
JOBS = "recsearch_jobs"


def init(app: Flask) -> None:
    runner = JobRunner(runtime_of(app))
    try:
        runner.recover_orphans()  # jobs left "running" by a server that stopped
    except Exception:  # a database away or full must not keep a worker from serving
        log.warning("settling jobs of stopped processes failed; the next job start retries")
    app.extensions[JOBS] = runner
    latency.init(app)
    app.register_blueprint(bp)
    from web import admin_page

    admin_page.init(app)


def jobs() -> JobRunner:
    return current_app.extensions[JOBS]  # type: ignore[no-any-return]


@bp.before_request
def _keyed() -> None:
    """The API key, or the admin page's login session (with its CSRF token on writes)."""
    require_admin()


_ADMIN: dict[str, Any] = {"tag": "admin", "access": "admin"}


@bp.post("/rebuild")
@operation(
    summary="Start an index build",
    body=EmptyBody,
    body_required=False,
    responses={202: Job},
    **_ADMIN,
)
def rebuild() -> ResponseReturnValue:
    body(EmptyBody, required=False)
    return respond(jobs().start("build"), 202)


@bp.post("/train")
@operation(
    summary="Start training a ranking model",
    body=TrainBody,
    body_required=False,
    responses={202: Job},
    **_ADMIN,
)
def train() -> ResponseReturnValue:
    params = body(TrainBody, required=False)
    return respond(jobs().start("train", params.model_dump()), 202)


@bp.post("/train-encoder")
@operation(
    summary="Start fine-tuning the encoder on the event history",
    body=TrainEncoderBody,
    body_required=False,
    responses={202: Job},
    **_ADMIN,
)
def train_encoder() -> ResponseReturnValue:
    params = body(TrainEncoderBody, required=False)
    return respond(jobs().start("train-encoder", params.model_dump()), 202)


@bp.get("/jobs")
@operation(summary="Recent jobs", responses={200: JobList}, **_ADMIN)
def job_list() -> ResponseReturnValue:
    return respond(JobList(jobs=jobs().list()))


@bp.get("/jobs/<int:job_id>")
@operation(summary="One job with its progress", responses={200: Job}, **_ADMIN)
def job_get(job_id: int) -> ResponseReturnValue:
    return respond(jobs().get(job_id))


@bp.post("/jobs/<int:job_id>/cancel")
@operation(summary="Ask a job to stop", responses={200: Job}, **_ADMIN)
def job_cancel(job_id: int) -> ResponseReturnValue:
    return respond(jobs().cancel(job_id))


@bp.post("/rollback")
@operation(
    summary="Serve an earlier index version",
    body=VersionBody,
    responses={200: IndexVersionOut},
    **_ADMIN,
)
def rollback() -> ResponseReturnValue:
    version = body(VersionBody).version
    runtime_of(current_app).live.store.point_current_at(version)
    return respond(IndexVersionOut(index_version=version))


@bp.post("/promote")
@operation(
    summary="Make a model version live",
    body=PromoteBody,
    responses={200: ModelVersionOut},
    **_ADMIN,
)
def promote() -> ResponseReturnValue:
    wanted = body(PromoteBody)
    models = ModelStore(runtime_of(current_app).settings.model_dir)
    models.promote(wanted.version, expected=wanted.expected)
    return respond(ModelVersionOut(model_version=wanted.version))


@bp.post("/rules")
@operation(
    summary="Add a merchandising rule (pin, boost, bury, hide)",
    body=RuleIn,
    responses={201: RuleOut},
    **_ADMIN,
)
def rule_create() -> ResponseReturnValue:
    rule = body(RuleIn)
    runtime = runtime_of(current_app)
    with runtime.write_session() as session:
        created = rule_store.create(session, rule)
    runtime.rules.invalidate()
    return respond(created, 201)


@bp.get("/rules")
@operation(summary="The merchandising rules", responses={200: RuleList}, **_ADMIN)
def rule_list() -> ResponseReturnValue:
    with runtime_of(current_app).session() as session:
        return respond(RuleList(rules=rule_store.list_all(session)))


@bp.delete("/rules/<int:rule_id>")
@operation(summary="Delete a merchandising rule", responses={200: RuleDeleted}, **_ADMIN)
def rule_delete(rule_id: int) -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    with runtime.write_session() as session:
        rule_store.remove(session, rule_id)
    runtime.rules.invalidate()
    return respond(RuleDeleted(deleted=rule_id))


@bp.post("/experiments")
@operation(
    summary="Start an online experiment (team-draft interleaving)",
    body=ExperimentIn,
    responses={201: ExperimentOut},
    **_ADMIN,
)
def experiment_start() -> ResponseReturnValue:
    wanted = body(ExperimentIn)
    runtime = runtime_of(current_app)
    models = ModelStore(runtime.settings.model_dir)
    with runtime.write_session() as session:
        started = experiments.start(session, models, wanted.candidate, wanted.traffic)
    runtime.experiments.invalidate()
    return respond(started, 201)


@bp.get("/experiments")
@operation(summary="Recent experiments", responses={200: ExperimentList}, **_ADMIN)
def experiment_list() -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    runtime.impressions.flush()
    with runtime.session() as session:
        found = experiments.list_all(session, positive_rating=runtime.settings.positive_rating)
    return respond(ExperimentList(experiments=found))


@bp.get("/experiments/<int:experiment_id>")
@operation(summary="An experiment's report", responses={200: ExperimentOut}, **_ADMIN)
def experiment_get(experiment_id: int) -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    runtime.impressions.flush()  # this process's latest interleaved requests count too
    with runtime.session() as session:
        return respond(
            experiments.report(
                session, experiment_id, positive_rating=runtime.settings.positive_rating
            )
        )


@bp.post("/experiments/<int:experiment_id>/stop")
@operation(summary="Stop an experiment", responses={200: ExperimentOut}, **_ADMIN)
def experiment_stop(experiment_id: int) -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    with runtime.write_session() as session:
        stopped = experiments.stop(session, experiment_id)
    runtime.experiments.invalidate()
    return respond(stopped)


@bp.post("/experiments/<int:experiment_id>/promote")
@operation(
    summary="Make an experiment's candidate live (ends it)",
    responses={200: ExperimentOut},
    **_ADMIN,
)
def experiment_promote(experiment_id: int) -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    models = ModelStore(runtime.settings.model_dir)
    with runtime.write_session() as session:
        promoted = experiments.promote(session, models, experiment_id)
    runtime.experiments.invalidate()
    return respond(promoted)


@bp.get("/search")
@operation(
    summary="The playground's search, always explained",
    query=SearchQuery,
    responses={200: SearchOut},
    **_ADMIN,
)
def playground_search() -> ResponseReturnValue:
    """The playground's search: the same engine call and JSON, with explanations."""
    runtime = runtime_of(current_app)
    search = query(SearchQuery, lists=SearchQuery.LISTS)
    search = search.model_copy(update={"explain": True})
    response = runtime.search(search.to_request())
    observe_search(runtime, response)
    return respond(response)


@bp.get("/users/<path:user_id>")
@operation(
    summary="A user's profile, latest events and recommendations (explained)",
    responses={200: AdminUser},
    **_ADMIN,
)
def user_inspect(user_id: str) -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    user_id = check_id(user_id, "user_id")
    with runtime.session() as session:
        profile = user_profile(session, user_id, runtime.settings)
        events = recent_events(session, user_id)
    found = runtime.search(SearchRequest(user_id=user_id, k=10, explain=True))
    observe_search(runtime, found)
    return respond(AdminUser(profile=profile, events=events, recommendations=found))


@bp.get("/items/<path:item_id>")
@operation(
    summary="An item and its similar items (explained)",
    responses={200: AdminItem},
    **_ADMIN,
)
def item_inspect(item_id: str) -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    item_id = check_id(item_id, "item_id")
    with runtime.session() as session:
        item = ItemOut.of(get_item(session, item_id))
    found = runtime.search(SearchRequest(k=8, explain=True, similar_to=item_id))
    observe_search(runtime, found)
    return respond(AdminItem(item=item, similar=found))


@bp.get("/status")
@operation(summary="Index, models, jobs and search latency", responses={200: AdminStatus}, **_ADMIN)
def status() -> ResponseReturnValue:
    runtime = runtime_of(current_app)
    store = runtime.live.store
    with runtime.session() as session:
        index = index_status(store, session)
    models = ModelStore(runtime.settings.model_dir)
    live_model = models.current_version()
    trained = [
        ModelInfo(version=v, live=v == live_model, report=models.report(v))
        for v in models.versions()
    ]
    return respond(
        AdminStatus(
            index=index,
            index_versions=store.versions(),
            models=trained if live_model else [_prior_row(), *trained],
            live_model=live_model or "prior",
            jobs=jobs().list(limit=10),
            latency_ms=latency.latency_summary(),
        )
    )


def _prior_row() -> ModelInfo:
    """The model that serves while none is promoted: the hand-set prior, with its weights."""
    prior = LinearRanker.prior()
    weights = {n: w for n, w in zip(prior.names, prior.weights.tolist(), strict=True) if w}
    return ModelInfo(
        version="prior",
        live=True,
        report={
            "source": "hand-set prior",
            "features": len(prior.names),
            "weights": weights,
            "bias": prior.bias,
        },
    )
