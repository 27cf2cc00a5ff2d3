"""The /v1 REST contract and its errors, through Flask's test client, on both databases."""

from __future__ import annotations

from typing import Any

import pytest

from engine.runtime import Runtime
from web.extensions import WORKERS


def assert_error(response: Any, status: int, error: str, fragment: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["error"] == error and fragment in body["message"], body
    return dict(body)


def test_search_before_any_build_is_503_with_advice(client: Any) -> None:
    body = assert_error(client.get("/v1/search?q=beach"), 503, "not_ready", "recsearch build")
    assert set(body) == {"error", "message"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["database"] == "ok"
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_search_get_and_post(client: Any, built: Runtime) -> None:
    got = client.get("/v1/search?q=skiing+in+the+alps&k=5")
    assert got.status_code == 200
    body = got.get_json()
    assert set(body) == {
        "results",
        "index_version",
        "took_ms",
        "mode",
        "request_id",
        "next_offset",
        "total",
        "total_relation",
    }
    assert len(body["request_id"]) == 32
    assert body["mode"] == "search"
    assert len(body["results"]) == 5 and body["took_ms"] > 0
    first = body["results"][0]
    assert {"id", "title", "category", "score", "tags", "attributes"} <= set(first)
    assert first["category"] == "mountain"
    posted = client.post("/v1/search", json={"q": "skiing in the alps", "k": 5})
    assert [r["id"] for r in posted.get_json()["results"]] == [r["id"] for r in body["results"]]
    filtered = client.get("/v1/search?q=food&category=city&k=7").get_json()["results"]
    assert len(filtered) == 7 and {r["category"] for r in filtered} == {"city"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["index_version"] == body["index_version"]
    assert "workers" not in ready  # one process: no workers to wait for


def test_readyz_waits_for_every_worker_of_the_first_round(client: Any, built: Runtime) -> None:
    """Under `recsearch serve` a worker that has loaded says not ready while another still
    loads (it would share the cores with that loading), and ready once all have."""

    class Loaded:
        def __init__(self) -> None:
            self.count = 1

        def loaded_of(self) -> tuple[int, int]:
            return self.count, 2

    loaded = Loaded()
    client.application.extensions[WORKERS] = loaded
    try:
        starting = client.get("/readyz")
        assert starting.status_code == 503 and starting.headers["Retry-After"]
        assert starting.get_json()["workers"] == "1 of 2 loaded"
        assert starting.get_json()["status"] == "not_ready"
        loaded.count = 3  # a worker replacing a dead one counts too
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.get_json()["workers"] == "2 of 2 loaded"
    finally:
        del client.application.extensions[WORKERS]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?q=x&k=0", "k"),
        ("?q=x&k=101", "k"),
        ("?q=x&k=ten", "k"),
        ("?q=x&exclude_seen=maybe", "exclude_seen"),
        ("?q=x&explain=perhaps", "explain"),
    ],
)
def test_search_bad_parameters_are_422(client: Any, built: Runtime, query: str, field: str) -> None:
    body = assert_error(client.get(f"/v1/search{query}"), 422, "invalid_input", field)
    assert [p["field"] for p in body["problems"]] == [field]


def test_search_post_bad_bodies(client: Any, built: Runtime) -> None:
    assert_error(
        client.post("/v1/search", data="{oops", content_type="application/json"),
        400,
        "bad_request",
        "not valid JSON",
    )
    assert_error(client.post("/v1/items"), 400, "bad_request", "body is empty")
    assert_error(client.post("/v1/search", json=["q"]), 422, "invalid_input", "JSON object")
    assert_error(client.post("/v1/search", json={"q": "x", "kk": 3}), 422, "invalid_input", "kk")


def test_items_crud(client: Any, built: Runtime) -> None:
    new = {"id": "atlantis", "title": "Atlantis", "category": "island", "tags": ["myth"]}
    created = client.post("/v1/items", json=new)
    assert created.status_code == 201 and created.get_json()["inserted"] == 1
    again = client.post("/v1/items", json={"items": [new]})
    assert again.status_code == 200 and again.get_json()["unchanged"] == 1
    item = client.get("/v1/items/atlantis").get_json()
    assert item["title"] == "Atlantis" and item["tags"] == ["myth"] and item["updated_at"]
    updated = client.post(
        "/v1/items", json=[dict(new, title="Atlantis II"), {"id": "mu", "title": "Mu"}]
    )
    assert updated.get_json()["inserted"] == 1 and updated.get_json()["updated"] == 1
    assert client.get("/v1/items/atlantis").get_json()["title"] == "Atlantis II"
    assert client.delete("/v1/items/atlantis").get_json() == {"deleted": "atlantis"}
    assert_error(client.get("/v1/items/atlantis"), 404, "not_found", "'atlantis'")
    assert_error(client.delete("/v1/items/atlantis"), 404, "not_found", "'atlantis'")


def test_items_validation_is_all_or_nothing(client: Any, built: Runtime) -> None:
    body = assert_error(
        client.post("/v1/items", json=[{"id": "ok", "title": "Fine"}, {"id": "bad", "tags": 5}]),
        422,
        "invalid_input",
        "items[1]",
    )
    assert [p["field"] for p in body["problems"]] == ["items[1].title", "items[1].tags"]
    assert client.get("/v1/items/ok").status_code == 404


def test_request_size_limits_are_413(client: Any, built: Runtime, app: Any) -> None:
    many = [{"id": f"i{i}", "title": "t"} for i in range(1001)]
    assert_error(client.post("/v1/items", json=many), 413, "too_large", "limit is 1000")
    app.config["MAX_CONTENT_LENGTH"] = 2048
    assert_error(
        client.post("/v1/items", json={"id": "x", "title": "y" * 5000}),
        413,
        "request_entity_too_large",
        "2048",
    )


def test_unknown_routes_and_methods_use_the_error_shape(client: Any) -> None:
    assert_error(client.get("/v1/nope"), 404, "not_found", "")
    assert_error(client.put("/v1/search"), 405, "method_not_allowed", "")


def test_app_factory_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """What gunicorn runs: `web:create_app()` configured by RECSEARCH_* alone."""
    from web import create_app, runtime_of

    monkeypatch.setenv("RECSEARCH_DATA_DIR", str(tmp_path / "state"))
    app = create_app()
    assert runtime_of(app).settings.data_dir == tmp_path / "state"
    assert app.test_client().get("/healthz").status_code == 200
    assert (tmp_path / "state" / "recsearch.db").is_file()
    runtime_of(app).close()
