"""Every route's real responses match what /openapi.json publishes for them.

Each documented operation is called with a valid request in an order that makes every one
of them meaningful (a build and a training job first, so rollback, promote and experiments
have versions to act on), and a few are also called to fail. Each JSON body is validated
against the schema the document gives for that status code, with the objects made closed
(no property the document does not list), so a response that grows, loses or renames a
field without its model does not pass. The test also checks that no documented operation
was left uncalled: a new route must join this list.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jsonschema_rs
import pytest

from engine.runtime import Runtime
from indexer.events import load_events
from tests.conftest import ROOT

ITEM = {
    "id": "conformance-island",
    "title": "Conformance Island",
    "text": "A quiet island with beaches and a lighthouse.",
    "category": "island",
    "tags": ["beaches"],
    "attributes": {"avg_daily_cost_usd": 90, "family_friendly": True},
}
EVENT = {"user_id": "schema-user", "item_id": "kyoto-japan", "type": "click"}
NOT_JSON = {
    "get /docs",
    "get /metrics",
    "get /admin/",
    "get /admin/login",
    "post /admin/login",
    "post /admin/logout",
}


def closed(schema: Any) -> Any:
    """The schema with additionalProperties false on every object that lists its properties
    and says nothing about others (pydantic leaves them open)."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


class Conformance:
    """Calls routes through the test client and validates each body against the spec."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.spec = client.get("/openapi.json").get_json()
        self.components = closed(self.spec["components"])
        self.called: set[str] = set()
        self.validated = 0

    def call(self, method: str, path: str, expect: int, **kwargs: Any) -> Any:
        response = getattr(self.client, method)(path, **kwargs)
        assert response.status_code == expect, (method, path, response.get_data(as_text=True))
        operation = self._operation(method, path)
        documented = operation["responses"].get(str(expect))
        assert documented is not None, f"{method} {path}: {expect} is not documented"
        schema = documented.get("content", {}).get("application/json", {}).get("schema")
        if schema is not None:
            assert response.mimetype == "application/json", (method, path)
            body = response.get_json()
            validator = jsonschema_rs.Draft202012Validator(
                {**closed(schema), "components": self.components}
            )
            errors = [f"{e.instance_path}: {e.message}" for e in validator.iter_errors(body)]
            assert not errors, f"{method} {path} ({expect}): {errors[:5]}"
            self.validated += 1
            return body
        return response

    def _operation(self, method: str, path: str) -> dict[str, Any]:
        bare = path.split("?", 1)[0]
        # The longest template first: /v1/items/{item_id} also matches .../similar.
        for template, methods in sorted(self.spec["paths"].items(), key=lambda p: -len(p[0])):
            literal = [re.escape(part) for part in re.split(r"\{[^}]+\}", template)]
            if re.fullmatch(".+".join(literal), bare) and method in methods:
                self.called.add(f"{method} {template}")
                return methods[method]  # type: ignore[no-any-return]
        raise AssertionError(f"{method} {path} is not in /openapi.json")


def test_every_route_answers_as_its_schema_says(built: Runtime, client: Any) -> None:
    with built.write_session() as session:  # histories to train from
        load_events(built, session, ROOT / "data" / "events.jsonl")
    check = Conformance(client)
    wait: Callable[[int], Any] = client.application.extensions["recsearch_jobs"].wait
    admin = "/admin/api"

    check.call("get", "/healthz", 200)
    check.call("get", "/readyz", 200)
    check.call("get", "/openapi.json", 200)
    check.call("get", "/v1/search?q=beach&k=3", 200)
    check.call("get", "/v1/search?q=beach&k=3&explain=true&diversity=0.3", 200)
    check.call("post", "/v1/search", 200, json={"q": "temples", "k": 2, "timings": True})
    check.call("get", "/v1/search?k=0", 422)
    check.call("post", "/v1/items", 201, json=ITEM)
    check.call("post", "/v1/items", 200, json={"items": [ITEM]})
    check.call("get", "/v1/items/conformance-island", 200)
    check.call("get", "/v1/items/kyoto-japan/similar?k=3&explain=true", 200)
    check.call("get", "/v1/items/no-such-item", 404)
    check.call("post", "/v1/events", 200, json=EVENT)
    check.call("post", "/v1/events", 422, json={**EVENT, "type": ""})
    check.call("get", "/v1/users/schema-user", 200)
    check.call("delete", "/v1/items/conformance-island", 200)

    build = check.call("post", f"{admin}/rebuild", 202)
    assert wait(build["id"]).state == "succeeded"
    train = check.call("post", f"{admin}/train", 202, json={"source": "events"})
    assert wait(train["id"]).state == "succeeded", wait(train["id"]).error
    # Its 202 starts minutes of tuning (tests/indexer/test_encoder_tuning.py runs one).
    check.call("post", f"{admin}/train-encoder", 422, json={"epochs": 0})
    check.call("get", f"{admin}/jobs", 200)
    check.call("get", f"{admin}/jobs/{build['id']}", 200)
    check.call("post", f"{admin}/jobs/{build['id']}/cancel", 409)
    check.call("get", f"{admin}/status", 200)
    versions = client.get(f"{admin}/status").get_json()["index_versions"]
    check.call("post", f"{admin}/rollback", 200, json={"version": versions[0]})
    check.call("post", f"{admin}/rollback", 422, json={"version": "../v1"})
    rule = check.call("post", f"{admin}/rules", 201, json={"action": "hide", "item_id": "x"})
    check.call("get", f"{admin}/rules", 200)
    check.call("delete", f"{admin}/rules/{rule['id']}", 200)
    experiment = check.call("post", f"{admin}/experiments", 201, json={"candidate": "latest"})
    check.call("get", f"{admin}/experiments", 200)
    check.call("get", f"{admin}/experiments/{experiment['id']}", 200)
    check.call("post", f"{admin}/experiments/{experiment['id']}/stop", 200)
    check.call("post", f"{admin}/experiments/{experiment['id']}/promote", 200)
    check.call("post", f"{admin}/promote", 200, json={"version": "v000001"})
    check.call("get", f"{admin}/search?q=island&k=3", 200)
    check.call("get", f"{admin}/users/schema-user", 200)
    check.call("get", f"{admin}/items/kyoto-japan", 200)

    documented = {
        f"{method} {path}" for path, methods in check.spec["paths"].items() for method in methods
    }
    assert documented - check.called - NOT_JSON == set()
    assert check.validated >= 30


@pytest.mark.parametrize("extra", [{"surprise": 1}, {"title": None}])
def test_a_body_the_document_does_not_describe_fails(client: Any, extra: dict[str, Any]) -> None:
    """The check itself: a body with a field too many, or a wrong type, is refused."""
    check = Conformance(client)
    schema = check.spec["components"]["schemas"]["ItemOut"]
    validator = jsonschema_rs.Draft202012Validator(
        {**closed(schema), "components": check.components}
    )
    item = {**ITEM, "created_at": None, "updated_at": None}
    assert validator.is_valid(item)
    assert not validator.is_valid({**item, **extra})
