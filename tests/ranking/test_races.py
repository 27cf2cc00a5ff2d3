"""One winner in every race: four callers released together, twenty times, on each database,
through the admin API of one app (each request on a connection of its own, as requests on
separate workers are) and, for model promotes, through stores on two hosts' folders that
share only the database. Exactly one caller moves each transition; the others get 409
naming the state they found (a rule deleted by another: 404)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from engine.core.errors import Conflict
from engine.ranking.model_store import ModelStore
from engine.ranking.ranker import LinearRanker
from engine.runtime import Runtime
from engine.store.published import PublishedVersions
from tests.conftest import all_at_once

TRIALS = 20
CALLERS = 4
ADMIN = "/admin/api"


def _models(runtime: Runtime, count: int) -> list[str]:
    """count trained-looking model versions, none live."""
    prior = LinearRanker.prior()
    store = ModelStore(runtime.settings.model_dir)
    return [
        store.save(
            LinearRanker(prior.names, prior.weights * (i + 2), prior.bias), {}, promote=False
        )
        for i in range(count)
    ]


def _race(client: Any, calls: list[tuple[str, str, dict[str, Any] | None]]) -> list[Any]:
    """Send the (method, path, json) requests at once, each from a client of its own; the
    responses as (status, body), in the order of calls."""
    app = client.application

    def send(method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any, str]:
        own = app.test_client()
        own.environ_base.update(client.environ_base)
        response = own.open(f"{ADMIN}{path}", method=method, json=body)
        return response.status_code, response.get_json(), f"{method} {path}"

    outcomes = all_at_once([partial(send, *call) for call in calls])
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    by_call: dict[str, list[Any]] = {}
    for status, body, key in outcomes:
        by_call.setdefault(key, []).append((status, body))
    return [by_call[f"{method} {path}"].pop() for method, path, _ in calls]


def _one_winner(outcomes: list[Any], ok: int, loser: int, says: Callable[[str], bool]) -> Any:
    """Exactly one `ok`; every other answer is `loser` with a message that `says` accepts.
    Returns the winner's body."""
    statuses = sorted(status for status, _ in outcomes)
    assert statuses == sorted([ok] + [loser] * (len(outcomes) - 1)), outcomes
    for status, body in outcomes:
        if status == loser:
            assert says(body["message"]), body
    return next(body for status, body in outcomes if status == ok)


def test_experiment_start_has_one_winner(client: Any, runtime: Runtime) -> None:
    candidate = _models(runtime, 1)[0]
    start = ("POST", "/experiments", {"candidate": candidate, "traffic": 0.5})
    for _ in range(TRIALS):
        outcomes = _race(client, [start] * CALLERS)
        won = _one_winner(outcomes, 201, 409, lambda m: "is running" in m)
        assert all(
            f"experiment {won['id']} is running" in b["message"] for s, b in outcomes if s == 409
        )
        assert client.post(f"{ADMIN}/experiments/{won['id']}/stop").status_code == 200


def test_experiment_stop_has_one_winner(client: Any, runtime: Runtime) -> None:
    candidate = _models(runtime, 1)[0]
    for _ in range(TRIALS):
        started = client.post(f"{ADMIN}/experiments", json={"candidate": candidate}).get_json()
        stop = ("POST", f"/experiments/{started['id']}/stop", None)
        won = _one_winner(
            _race(client, [stop] * CALLERS),
            200,
            409,
            lambda m, i=started["id"]: m.endswith(f"experiment {i} is already stopped"),
        )
        assert won["state"] == "stopped"


def test_experiment_promote_has_one_winner(client: Any, runtime: Runtime) -> None:
    versions = _models(runtime, 2)
    store = ModelStore(runtime.settings.model_dir)
    for trial in range(TRIALS):
        candidate = versions[trial % 2]  # never the live one
        started = client.post(f"{ADMIN}/experiments", json={"candidate": candidate}).get_json()
        promote = ("POST", f"/experiments/{started['id']}/promote", None)
        won = _one_winner(
            _race(client, [promote] * CALLERS),
            200,
            409,
            lambda m, i=started["id"]: m.endswith(f"experiment {i} is already promoted"),
        )
        assert won["state"] == "promoted" and store.current_version() == candidate


def test_stop_and_promote_together_promote_once(client: Any, runtime: Runtime) -> None:
    """The issue's case: stop and promote sent together. Promote moves running or stopped to
    promoted, so a stop that wins first may be followed by one promote; never two promotes,
    and never a stop after the promote."""
    versions = _models(runtime, 2)
    for trial in range(TRIALS):
        started = client.post(f"{ADMIN}/experiments", json={"candidate": versions[trial % 2]})
        path = f"/experiments/{started.get_json()['id']}"
        stops, promotes = 2, 2
        calls = [("POST", f"{path}/stop", None)] * stops + [
            ("POST", f"{path}/promote", None)
        ] * promotes
        outcomes = _race(client, calls)
        stopped = [s for s, _ in outcomes[:stops]]
        promoted = [s for s, _ in outcomes[stops:]]
        assert sorted(promoted) == [200, 409], outcomes
        assert sorted(stopped) in ([200, 409], [409, 409]), outcomes
        for status, body in outcomes:
            if status == 409:
                assert re.search(r"is already (stopped|promoted)$", body["message"]), body
        final = client.get(f"{ADMIN}{path}").get_json()
        assert final["state"] == "promoted"


def test_model_promote_with_expected_has_one_winner(client: Any, runtime: Runtime) -> None:
    versions = _models(runtime, 4)
    store = ModelStore(runtime.settings.model_dir)
    for trial in range(TRIALS):
        live = store.current_version() or "prior"
        others = [v for v in versions if v != live]
        targets = [
            others[trial % 3],
            others[trial % 3],
            others[(trial + 1) % 3],
            others[(trial + 2) % 3],
        ]
        calls = [("POST", "/promote", {"version": v, "expected": live}) for v in targets]
        outcomes = _race(client, calls)
        won = _one_winner(outcomes, 200, 409, lambda m: True)["model_version"]
        assert store.current_version() == won
        for status, body in outcomes:
            if status == 409:
                assert body["message"] in (
                    f"the live model is {won}, not {live}: reload and decide again",
                    f"model version {won} is already live",
                ), body
    # Without expected a promote just sets: the live version again is a 200 that changes nothing.
    live = store.current_version()
    again = client.post(f"{ADMIN}/promote", json={"version": live})
    assert again.status_code == 200 and store.current_version() == live


def test_model_promote_across_hosts_has_one_winner(database: Engine, tmp_path: Path) -> None:
    """Shared versions (RECSEARCH_VERSION_SHARING=database): two hosts, no common folder,
    so no common file lock; the database's lock makes the compare-and-set."""
    hosts = [ModelStore(tmp_path / h, PublishedVersions(database, "models")) for h in "ab"]
    prior = LinearRanker.prior()
    versions = [
        hosts[0].save(LinearRanker(prior.names, prior.weights * i, prior.bias), {}, promote=False)
        for i in (2, 3, 4)
    ]
    for trial in range(TRIALS):
        live = hosts[1].current_version() or "prior"
        others = [v for v in versions if v != live]
        calls = [
            partial(hosts[i % 2].promote, others[(trial + i) % 2], expected=live)
            for i in range(CALLERS)
        ]
        outcomes = all_at_once(calls)
        assert sorted(type(o).__name__ for o in outcomes) == ["Conflict"] * 3 + ["NoneType"]
        won = hosts[0].current_version()
        assert won in others and hosts[1].current_version() == won
        for lost in (o for o in outcomes if isinstance(o, Conflict)):
            assert won is not None and won in str(lost), lost


def test_rule_create_has_one_winner(client: Any, runtime: Runtime) -> None:
    for trial in range(TRIALS):
        rule = {"action": "hide", "item_id": f"item-{trial}", "query": "beach"}
        won = _one_winner(
            _race(client, [("POST", "/rules", rule)] * CALLERS),
            201,
            409,
            lambda m: "already does this" in m,
        )
        outcomes = _race(client, [("POST", "/rules", rule)])
        assert (
            outcomes[0][0] == 409
            and f"rule {won['id']} already does this" in outcomes[0][1]["message"]
        )
    rules = client.get(f"{ADMIN}/rules").get_json()["rules"]
    assert len(rules) == TRIALS
    # Another time window, or another query, is another rule.
    later = {
        "action": "hide",
        "item_id": "item-0",
        "query": "beach",
        "starts_at": "2030-01-01T00:00:00Z",
    }
    assert client.post(f"{ADMIN}/rules", json=later).status_code == 201
    assert (
        client.post(f"{ADMIN}/rules", json={"action": "hide", "item_id": "item-0"}).status_code
        == 201
    )


def test_rule_delete_has_one_winner(client: Any, runtime: Runtime) -> None:
    for trial in range(TRIALS):
        made = client.post(f"{ADMIN}/rules", json={"action": "hide", "item_id": f"gone-{trial}"})
        rule_id = made.get_json()["id"]
        won = _one_winner(
            _race(client, [("DELETE", f"/rules/{rule_id}", None)] * CALLERS),
            200,
            404,
            lambda m, i=rule_id: f"rule {i} (already deleted" in m,
        )
        assert won == {"deleted": rule_id}
    assert client.get(f"{ADMIN}/rules").get_json()["rules"] == []
