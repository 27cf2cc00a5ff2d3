"""The CLI at par with the API: `recsearch search` takes the API's parameters and answers with
its results, JSON and errors; `recsearch jobs` shows and cancels the admin API's jobs; and
`recsearch build` and `train` run in the foreground as jobs of that same history."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from importlib.metadata import version
from typing import Any

import pytest
from click.testing import CliRunner, Result

from engine.core.clock import utcnow
from engine.encoder.embedder import Embedder
from engine.index.artifact import IndexStore
from engine.runtime import Runtime
from engine.search.response import SearchOut
from engine.store.election import leadership_for
from engine.store.models import Job
from indexer.events import load_events
from indexer.ingest import ingest
from indexer.jobs import JobRunner
from indexer.worker import Worker
from tests.conftest import ROOT, SAMPLE_CATALOG
from web.cli import Context, cli, main
from web.cli.jobs import run_as_job

FILTERS = '{"country": "France"}'
# (CLI arguments, the same search as the API's query string)
SEARCHES = [
    (["beach", "-k", "5", "--filters", FILTERS], {"q": "beach", "k": 5, "filters": FILTERS}),
    (["city", "-k", "4", "--offset", "4"], {"q": "city", "k": 4, "offset": 4}),
    (["food", "-k", "6", "--diversity", "0.6"], {"q": "food", "k": 6, "diversity": 0.6}),
    (
        ["hiking", "-k", "6", "--max-per-category", "1"],
        {"q": "hiking", "k": 6, "max_per_category": 1},
    ),
    (
        ["--context", "paris-france", "--context", "rome-italy"],
        {"context_items": "paris-france,rome-italy"},
    ),
    (
        ["museums", "--facets", "category,tags", "--fields", "title,text"],
        {"q": "museums", "facets": "category,tags", "fields": "title,text"},
    ),
    (
        ["musuems", "--no-typo-tolerance", "--exclude-seen", "none"],
        {"q": "musuems", "typo_tolerance": "false", "exclude_seen": "none"},
    ),
    (
        ["Eiffel Tower", "--highlight", "-k", "2", "--explain", "--timings"],
        {"q": "Eiffel Tower", "highlight": "true", "k": 2, "explain": "true", "timings": "true"},
    ),
]
# What differs between two runs of one search.
PER_RUN = ("took_ms", "request_id", "timings_ms")


def run(runtime: Runtime, *args: str) -> Result:
    context = Context(runtime.settings, quiet=True, runtime=runtime)
    return CliRunner().invoke(cli, list(args), obj=context, catch_exceptions=False)


def run_main(runtime: Runtime, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`recsearch ARGS` as the installed command runs it: its exit status and stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args), Context(runtime.settings, quiet=True, runtime=runtime))
    return int(exited.value.code or 0), capsys.readouterr().err


def same_answer(cli_json: str, api_json: dict[str, Any]) -> dict[str, Any]:
    """The CLI's --json, equal to the API's but for per-run fields, and (where every hit has
    all its fields) the response model's own JSON."""
    ours = json.loads(cli_json)
    if all("score" in hit for hit in ours["results"]):  # `fields` leaves the others out
        assert json.loads(SearchOut.model_validate_json(cli_json).model_dump_json()) == ours
    for name in PER_RUN:
        ours.pop(name, None), api_json.pop(name, None)
    assert ours == api_json
    return ours


def test_search_options_give_the_api_results(
    client: Any, built: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, params in SEARCHES:
        api = client.get("/v1/search", query_string=params)
        assert api.status_code == 200, api.get_json()
        result = run(built, "search", *args, "--json")
        assert result.exit_code == 0, result.output
        answer = same_answer(result.output, api.get_json())
        assert answer["results"], args
    filtered = json.loads(run(built, "search", "beach", "--filters", FILTERS, "--json").output)
    assert {hit["attributes"]["country"] for hit in filtered["results"]} == {"France"}
    paged = run(built, "search", "city", "-k", "4").output.splitlines()
    assert paged[-1].endswith("results; next page: --offset 4")
    similar = run(built, "search", "--similar-to", "paris-france", "-k", "4", "--json")
    same_answer(similar.output, client.get("/v1/items/paris-france/similar?k=4").get_json())
    assert "paris-france" not in similar.output

    # rollback: the admin API's, and both answer from the version it names at once
    assert run(built, "rollback", "v000001").output == "index v000001 is current\n"
    assert json.loads(run(built, "search", "beach", "--json").output)["index_version"] == "v000001"
    assert client.get("/v1/search?q=beach").get_json()["index_version"] == "v000001"
    for wanted, why in [("v000009", "'v000009'"), ("latest", "")]:
        status, err = run_main(built, capsys, "rollback", wanted)
        api = client.post("/admin/api/rollback", json={"version": wanted}).get_json()
        assert status == 2 and err == f"error: {api['message']}\n" and why in err


def test_bad_search_options_exit_2_as_the_api_refuses_them(
    client: Any, runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    for option, value, param in [
        ("--filters", "{bad", "filters"),
        ("--filters", "[1]", "filters"),
        ("--diversity", "2", "diversity"),
        ("--offset", "-1", "offset"),
        ("--fields", "title,price", "fields"),
        ("-k", "0", "k"),
    ]:
        api = client.get("/v1/search", query_string={"q": "beach", param: value})
        assert api.status_code == 422
        status, err = run_main(runtime, capsys, "search", "beach", option, value)
        assert status == 2 and err == f"error: {api.get_json()['message']}\n"
        assert err.startswith(f"error: {param}: ")
    status, err = run_main(runtime, capsys, "search", "beach", "--similar-to", "paris-france")
    assert (
        status == 2 and "--similar-to takes -k, --user, --explain and --timings, not QUERY" in err
    )


def test_version_is_the_installed_package() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output == f"recsearch {version('recsearch')}\n"


def test_a_cli_build_and_training_are_jobs_of_the_history(client: Any, built: Runtime) -> None:
    assert run(built, "jobs").output.startswith("no jobs yet")
    result = run(built, "build")
    assert result.exit_code == 0 and "published index v000003" in result.output
    listed = client.get("/admin/api/jobs").get_json()["jobs"]
    assert [job["kind"] for job in listed] == ["build"]
    job = listed[0]
    assert job["state"] == "succeeded" and job["attempts"] == 1 and job["error"] is None
    assert job["worker"].startswith("cli:") and job["worker"].endswith(":" + str(os.getpid()))
    assert job["phase"] == "publish" and job["done"] == job["total"] == 1
    assert job["result"]["version"] == "v000003" and job["result"]["items"] == 325
    table = run(built, "jobs").output.splitlines()
    assert table[0].split()[:4] == ["id", "kind", "state", "progress"]
    assert table[1].split()[:4] == [str(job["id"]), "build", "succeeded", "publish"]
    shown = run(built, "jobs", str(job["id"])).output
    assert shown.startswith(f"job {job['id']} (build): succeeded\n")
    assert f"worker    {job['worker']}" in shown and '"version": "v000003"' in shown
    as_json = json.loads(run(built, "jobs", str(job["id"]), "--json").output)
    assert as_json == client.get(f"/admin/api/jobs/{job['id']}").get_json()
    assert json.loads(run(built, "jobs", "--json").output) == {"jobs": listed}

    skipped = run(built, "build", "--if-stale")
    assert skipped.exit_code == 0 and "up to date" in skipped.output
    with built.write_session() as session:
        load_events(built, session, ROOT / "data" / "events.jsonl")
    trained = run(built, "train", "--from-events")
    assert trained.exit_code == 0 and "model v000001" in trained.output
    latest = client.get("/admin/api/jobs").get_json()["jobs"]
    assert [(j["kind"], j["state"]) for j in latest] == [
        ("train", "succeeded"),
        ("build", "succeeded"),
        ("build", "succeeded"),
    ]
    assert latest[1]["params"] == {"if_stale": True} and latest[1]["result"]["skipped"]
    assert latest[0]["params"] == {"source": "events", "promote": False}
    assert latest[0]["result"]["version"] == "v000001" and latest[0]["result"]["examples"] > 0


def test_jobs_show_and_cancel_another_process_job(
    runtime: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    with runtime.write_session() as session:
        other = Job(kind="build", state="running", params={}, done=0, total=0)
        other.created_at = other.heartbeat_at = other.started_at = utcnow()
        other.attempts, other.worker = 1, "elsewhere:1"
        session.add(other)
        session.flush()
        other_id = other.id
    lease = leadership_for(runtime.db, f"job-{other_id}")
    assert lease.try_acquire()
    try:
        status, err = run_main(runtime, capsys, "build")
        assert status == 2 and f"job {other_id} (build) is already running" in err
        asked = run(runtime, "jobs", str(other_id), "--cancel").output
        assert f"job {other_id} (build): running" in asked and "cancel requested" in asked
        assert JobRunner(runtime).get(other_id).cancel_requested
    finally:
        lease.release()  # that process is gone now: nothing would ever read the request
    cancelled = run(runtime, "jobs", str(other_id), "--cancel").output
    assert cancelled.startswith(f"job {other_id} (build): cancelled")
    status, err = run_main(runtime, capsys, "jobs", str(other_id), "--cancel")
    assert status == 2 and err == f"error: job {other_id} already cancelled\n"
    for missing in ("999999", "0", str(2**63)):
        status, err = run_main(runtime, capsys, "jobs", missing)
        assert status == 2 and err.startswith(f"error: no job {missing}: ")
    status, err = run_main(runtime, capsys, "jobs", "--cancel")
    assert status == 2 and "--cancel needs a job ID" in err

    queued = Runtime(runtime.settings.replace(jobs="worker"), embedder=runtime.embedder)
    try:
        job = JobRunner(queued).start("train")
    finally:
        queued.close()
    assert run(runtime, "jobs", str(job.id), "--cancel").output.startswith(
        f"job {job.id} (train): cancelled"
    )


def test_a_cancel_from_anywhere_stops_a_cli_build(runtime: Runtime, embedder: Embedder) -> None:
    with runtime.write_session() as session:
        ingest(runtime, session, SAMPLE_CATALOG)
    small_batches = copy.copy(embedder)  # the same model, a progress report every 2 texts
    small_batches.batch_size = 2
    slow = Runtime(runtime.settings, embedder=small_batches)
    asked: list[Any] = []

    def cancel_when_embedding() -> None:
        elsewhere = JobRunner(runtime)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            jobs = elsewhere.list()
            if jobs and jobs[0].phase == "embed" and jobs[0].done:
                asked.append(elsewhere.cancel(jobs[0].id))
                return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_when_embedding)
    canceller.start()
    try:
        result = run(slow, "build")
    finally:
        canceller.join(130)
        slow.close()
    assert asked and asked[0].cancel_requested
    assert result.exit_code == 1 and f"job {asked[0].id} (build) cancelled" in result.output
    job = JobRunner(runtime).get(asked[0].id)
    assert job.state == "cancelled" and job.finished_at is not None
    assert IndexStore(runtime.settings.index_dir).current_version() is None


def test_a_worker_never_takes_a_cli_job(runtime: Runtime) -> None:
    """Inserted running with its lease held: no worker claims it, no recovery settles it;
    a lost one fails with the reason instead of going back to the queue."""
    settings = runtime.settings.replace(jobs="worker")
    cli_side = Runtime(settings, embedder=runtime.embedder)
    worker = Worker(Runtime(settings, embedder=runtime.embedder))
    seen: list[Any] = []

    def work(progress: Any) -> tuple[str, dict[str, Any]]:
        progress("step", 0, 1)
        seen.append((worker.runner.claim_next(), worker.runner.recover_orphans()))
        seen.append(JobRunner(runtime).list()[0])
        progress("step", 1, 1)
        return "value", {"ok": True}

    try:
        assert run_as_job(Context(settings, True, cli_side), "build", {}, work) == "value"
        assert seen[0] == (None, 0) and seen[1].state == "running"
        assert seen[1].worker.startswith("cli:") and seen[1].phase == "step"
        done = JobRunner(runtime).get(seen[1].id)
        assert done.state == "succeeded" and done.result == {"ok": True}

        with runtime.write_session() as session:
            lost = Job(kind="train", state="running", params={}, done=0, total=0)
            lost.created_at = lost.heartbeat_at = lost.started_at = utcnow()
            lost.attempts, lost.worker = 1, "cli:gone:1"
            session.add(lost)
            session.flush()
            lost_id = lost.id
        assert worker.runner.recover_orphans() == 1
        failed = JobRunner(runtime).get(lost_id)
        assert failed.state == "failed" and failed.error is not None
        assert "(cli:gone:1) stopped during attempt 1; start it again" in failed.error
    finally:
        cli_side.close()
        worker.runtime.close()


def test_an_interrupted_cli_job_is_cancelled(runtime: Runtime) -> None:
    def work(progress: Any) -> tuple[None, dict[str, Any]]:
        progress("embed", 1, 10)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_as_job(Context(runtime.settings, True, runtime), "build", {}, work)
    job = JobRunner(runtime).list()[0]
    assert job.state == "cancelled" and job.error == "interrupted" and job.finished_at
    again = run_as_job(Context(runtime.settings, True, runtime), "build", {}, lambda _: (1, {}))
    assert again == 1  # no active build was left behind


def test_a_failed_cli_job_says_why(runtime: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_main(runtime, capsys, "build")  # an empty catalog
    assert status == 2 and err.endswith(
        "error: the catalog is empty: run `recsearch ingest FILE` before building\n"
    )
    job = JobRunner(runtime).list()[0]
    assert job.state == "failed" and job.error is not None and "catalog is empty" in job.error
