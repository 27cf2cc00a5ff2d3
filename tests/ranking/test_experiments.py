"""Online experiments through the admin API and the CLI: team-draft interleaving on a share
of searches, clicks credited to the side that showed the item, a sign test, stop, promote."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from engine.ranking.model_store import ModelStore
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.store.models import Impression
from web.cli import Context, cli


def _reversed_prior(runtime: Runtime) -> str:
    """A candidate that ranks the opposite way to the live (prior) model."""
    prior = LinearRanker.prior()
    flipped = LinearRanker(prior.names, -prior.weights, -prior.bias, version="flipped")
    return ModelStore(runtime.settings.model_dir).save(flipped, {"note": "test"}, promote=False)


def test_interleaved_clicks_are_credited_and_tested(client: Any, built: Runtime) -> None:
    candidate = _reversed_prior(built)
    queries = ("quiet beaches", "mountain hiking", "museums and art", "street food", "islands")
    # What the live model ranks first for each query: the flipped candidate ranks it last,
    # so team draft always credits it to "live".
    tops = {
        q: client.get("/v1/search", query_string={"q": q, "k": 6}).get_json()["results"][0]["id"]
        for q in queries
    }
    response = client.post("/admin/api/experiments", json={"candidate": "latest", "traffic": 1})
    assert response.status_code == 201, response.get_json()
    started = response.get_json()
    assert started["candidate"] == candidate and started["live"] == "prior"
    assert started["state"] == "running" and started["wins"] == started["losses"] == 0
    again = client.post("/admin/api/experiments", json={"candidate": candidate})
    assert again.status_code == 409

    clicked = 0
    for q in queries:
        body = client.get("/v1/search", query_string={"q": q, "k": 6}).get_json()
        # click the item the live model ranks first: that side should win
        first = tops[q]
        assert first in [r["id"] for r in body["results"]]
        event = {
            "user_id": f"u-{q}",
            "item_id": first,
            "type": "click",
            "request_id": body["request_id"],
        }
        assert client.post("/v1/events", json={"events": [event]}).status_code == 200
        clicked += 1
    report = client.get(f"/admin/api/experiments/{started['id']}").get_json()
    assert report["wins"] + report["losses"] + report["ties"] == clicked
    assert report["requests"] >= clicked
    # the flipped model puts the live model's favourites last: every click went to "live"
    assert (report["wins"], report["losses"], report["ties"]) == (0, clicked, 0), report
    assert report["p_value"] == pytest.approx(2 / 2**clicked)

    stopped = client.post(f"/admin/api/experiments/{started['id']}/stop").get_json()
    assert stopped["state"] == "stopped"
    assert client.post(f"/admin/api/experiments/{started['id']}/stop").status_code == 409
    built.experiments.invalidate()
    after = client.get("/v1/search?q=quiet beaches&k=6").get_json()
    built.impressions.flush()
    with built.session() as session:
        sides = {
            r.request_id: (r.experiment_id, r.team) for r in session.scalars(select(Impression))
        }
    assert sides[after["request_id"]] == (None, None)  # no longer interleaved
    assert sides[body["request_id"]][0] == started["id"]

    promoted = client.post(f"/admin/api/experiments/{started['id']}/promote").get_json()
    assert promoted["state"] == "promoted"
    assert ModelStore(built.settings.model_dir).current_version() == candidate
    listed = client.get("/admin/api/experiments").get_json()["experiments"]
    assert [e["id"] for e in listed] == [started["id"]]


def test_experiment_requests_are_checked(client: Any, built: Runtime) -> None:
    assert client.post("/admin/api/experiments", json={"candidate": "latest"}).status_code == 422
    _reversed_prior(built)
    for body, status in (
        ({"candidate": "v000099"}, 404),
        ({"candidate": "nine"}, 422),
        ({"candidate": "latest", "traffic": 1.5}, 422),
        ({"traffic": 0.5}, 422),
    ):
        assert client.post("/admin/api/experiments", json=body).status_code == status, body
    assert client.get("/admin/api/experiments/12345").status_code == 404


def test_the_cli_mirrors_the_api(built: Runtime) -> None:
    candidate = _reversed_prior(built)
    context = Context(built.settings, quiet=True, runtime=built)

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, list(args), obj=context)
        assert result.exit_code == 0, result.output
        return result.output

    assert f"{candidate} vs live prior on 25%" in run(
        "experiment", "start", "latest", "--traffic", "0.25"
    )
    assert "(running)" in run("experiment", "status")
    assert "experiment 1 stopped" in run("experiment", "stop", "1")
    assert "wins 0, losses 0, ties 0; p = 1" in run("experiment", "status", "1")
