"""API keys: writes and user profiles always need one; search and events as configured."""

from __future__ import annotations

import stat
from typing import Any

from click.testing import CliRunner

from engine.core.secrets import api_key
from engine.runtime import Runtime
from web import create_app
from web.cli import Context, cli

ITEM = {"id": "atlantis", "title": "Atlantis"}
EVENT = {"user_id": "u", "item_id": "tokyo-japan", "type": "view"}


def status(response: Any) -> tuple[int, str]:
    return response.status_code, response.get_json()["error"]


def test_keyed_by_default_off_loopback(built: Runtime) -> None:
    app = create_app(runtime=built)  # as under gunicorn on 0.0.0.0
    anonymous = app.test_client()
    assert status(anonymous.get("/v1/search?q=beach")) == (401, "unauthorized")
    assert status(anonymous.post("/v1/events", json=EVENT)) == (401, "unauthorized")
    assert status(anonymous.post("/v1/items", json=ITEM)) == (401, "unauthorized")
    assert status(anonymous.delete("/v1/items/tokyo-japan")) == (401, "unauthorized")
    wrong = {"Authorization": "Bearer nope"}
    assert status(anonymous.get("/v1/search?q=beach", headers=wrong)) == (403, "forbidden")
    right = {"Authorization": f"Bearer {api_key(built.settings)}"}
    assert anonymous.get("/v1/search?q=beach", headers=right).status_code == 200
    assert anonymous.post("/v1/items", json=ITEM, headers=right).status_code == 201
    assert anonymous.get("/healthz").status_code == 200  # probes stay open
    body = anonymous.get("/v1/search?q=beach").get_json()
    assert set(body) == {"error", "message"} and "Bearer" in body["message"]


def test_open_search_and_events_on_loopback(built: Runtime) -> None:
    anonymous = create_app(runtime=built, loopback=True).test_client()
    assert anonymous.get("/v1/search?q=beach").status_code == 200
    assert anonymous.post("/v1/events", json=EVENT).status_code == 200
    assert status(anonymous.post("/v1/items", json=ITEM)) == (401, "unauthorized")
    assert status(anonymous.get("/v1/users/u")) == (401, "unauthorized")


def test_open_endpoints_setting(built: Runtime) -> None:
    rt = Runtime(built.settings.replace(open_endpoints="events"), embedder=built.embedder)
    anonymous = create_app(runtime=rt).test_client()
    assert anonymous.post("/v1/events", json=EVENT).status_code == 200
    assert status(anonymous.get("/v1/search?q=beach")) == (401, "unauthorized")
    rt.close()


def test_key_is_generated_once_private_and_overridable(runtime: Runtime) -> None:
    settings = runtime.settings
    key = api_key(settings)
    path = settings.data_dir / "api_key"
    assert len(key) >= 40 and path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert api_key(settings) == key
    assert api_key(settings.replace(api_key="from-env-0123456789")) == "from-env-0123456789"
    context = Context(settings, quiet=True, runtime=runtime)
    assert CliRunner().invoke(cli, ["key"], obj=context).output.strip() == key
