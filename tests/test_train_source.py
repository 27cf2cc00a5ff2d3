"""`recsearch train` without a source flag: impressions when some were clicked, else the
event history; it says which."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from engine.runtime import Runtime
from indexer.events import load_events
from indexer.train import default_source
from tests.conftest import ROOT
from tests.test_admin import wait_done
from web.cli import Context, cli


def _train(runtime: Runtime) -> str:
    context = Context(runtime.settings, quiet=True, runtime=runtime)
    result = CliRunner().invoke(cli, ["train"], obj=context)
    assert result.exit_code == 0, result.output
    return result.output


def test_no_impressions_means_the_event_history(built: Runtime) -> None:
    with built.write_session() as session:
        load_events(built, session, ROOT / "data" / "events.jsonl")
    with built.session() as session:
        assert default_source(built, session)[0] == "events"
    output = _train(built)
    assert "no logged impressions: training from the event history" in output
    assert "model v000001" in output


def test_clicked_impressions_are_preferred(client: Any, built: Runtime) -> None:
    with built.write_session() as session:
        load_events(built, session, ROOT / "data" / "events.jsonl")
    shown = [client.get(f"/v1/search?q={q}&k=5").get_json() for q in ("beach", "museums")]
    with built.session() as session:
        source, why = default_source(built, session)
    assert source == "events" and "no event names their request_id" in why
    clicks = [
        {
            "user_id": "clicker",
            "item_id": body["results"][1]["id"],
            "type": "click",
            "request_id": body["request_id"],
        }
        for body in shown
    ]
    assert client.post("/v1/events", json={"events": clicks}).status_code == 200
    with built.session() as session:
        source, why = default_source(built, session)
    assert source == "impressions" and "2 requests with a click" in why
    assert "training from logged impressions" in _train(built)
    started = client.post("/admin/api/train", json={})
    assert started.status_code == 202
    job = wait_done(client, started.get_json()["id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["source"] == "impressions"
    assert "training from logged impressions" in job["result"]["source_reason"]
