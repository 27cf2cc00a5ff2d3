"""API keys and the admin sign-in: writes and profiles always need a key, search and events as
configured; the login's CSRF token, cookie flags, sign-out and expiry, rate limits on wrong
keys, non-ASCII tokens, and the request size limit on every endpoint."""

from __future__ import annotations

import io
import re
import stat
import time
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

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
    assert status(anonymous.get("/v1/search?q=beach", headers=wrong)) == (401, "unauthorized")
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


BIG = 17 * 1024 * 1024  # over the default 16 MiB limit


def _csrf(html: str, attribute: str = "value") -> str:
    match = re.search(rf'name="csrf" {attribute}="([^"]*)"', html)
    assert match, html
    return match.group(1)


def _sign_in(client: Any, key: str) -> Any:
    token = _csrf(client.get("/admin/login").get_data(as_text=True))
    response = client.post("/admin/login", data={"csrf": token, "password": key})
    assert response.status_code == 302, response.get_data(as_text=True)
    return response


def _key(app: Flask) -> str:
    return str(app.config["RECSEARCH_API_KEY"])


def test_login_needs_the_csrf_token_issued_to_this_client(app: Flask) -> None:
    key = _key(app)
    cookieless = app.test_client()
    refused = cookieless.post("/admin/login", data={"csrf": "", "password": key})
    assert refused.status_code == 403 and "expired" in refused.get_data(as_text=True)
    assert cookieless.post("/admin/login", data={"password": key}).status_code == 403
    assert cookieless.get("/admin/api/status").status_code == 401  # not signed in

    other = app.test_client()
    others_token = _csrf(other.get("/admin/login").get_data(as_text=True))
    # A token from another client's form is not this client's: it has no session to match.
    forged = {"csrf": others_token, "password": key}
    assert cookieless.post("/admin/login", data=forged).status_code == 403
    browser = app.test_client()
    browser.get("/admin/login")
    assert browser.post("/admin/login", data=forged).status_code == 403
    _sign_in(browser, key)
    assert browser.get("/admin/api/status").status_code == 200


def _set_cookie(response: Any) -> str:
    cookies = [v for k, v in response.headers.items() if k == "Set-Cookie"]
    assert len(cookies) == 1, cookies
    return str(cookies[0])


def test_session_cookie_flags_and_lifetime(runtime: Runtime) -> None:
    for loopback in (False, True):
        app = create_app(runtime=runtime, loopback=loopback)
        cookie = _set_cookie(_sign_in(app.test_client(), _key(app)))
        flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "expires"} <= flags
        assert "SameSite=Lax" in cookie
        assert ("secure" in flags) is (not loopback)
        expires = re.search(r"Expires=([^;]+)", cookie).group(1)  # type: ignore[union-attr]
        lifetime_s = parsedate_to_datetime(expires).timestamp() - time.time()
        assert 12 * 3600 - 60 < lifetime_s <= 12 * 3600


def test_the_login_form_warns_when_the_cookie_cannot_be_kept(runtime: Runtime) -> None:
    app = create_app(runtime=runtime)  # off loopback: the cookie is HTTPS-only
    plain = app.test_client().get("/admin/login", base_url="http://search.example.com")
    assert "HTTPS" in plain.get_data(as_text=True)
    for base_url in ("https://search.example.com", "http://localhost:8000", "http://[::1]:8000"):
        fine = app.test_client().get("/admin/login", base_url=base_url)
        assert "HTTPS" not in fine.get_data(as_text=True), base_url


def test_sign_out_ends_the_session_in_every_server_process(runtime: Runtime) -> None:
    one, two = create_app(runtime=runtime), create_app(runtime=runtime)  # two gunicorn workers
    browser = one.test_client()
    _sign_in(browser, _key(one))
    cookie = browser.get_cookie("session")
    assert cookie is not None
    page = browser.get("/admin/").get_data(as_text=True)
    token = _csrf(page, "content")

    replay = two.test_client()  # the same cookie, sent to the other worker
    replay.set_cookie("session", cookie.value)
    assert replay.get("/admin/api/status").status_code == 200
    assert replay.post("/admin/logout", data={"csrf": token}).status_code == 302

    for app in (one, two):  # the old cookie, replayed after sign-out, is refused everywhere
        stolen = app.test_client()
        stolen.set_cookie("session", cookie.value)
        assert stolen.get("/admin/").headers["Location"].endswith("/admin/login")
        assert stolen.get("/admin/api/status").status_code == 401
        refused = stolen.post("/admin/api/rebuild", headers={"X-CSRF-Token": token})
        assert refused.status_code == 401


def test_sign_out_needs_the_csrf_token(app: Flask) -> None:
    browser = app.test_client()
    _sign_in(browser, _key(app))
    assert browser.post("/admin/logout", data={"csrf": "forged"}).status_code == 302
    assert browser.get("/admin/api/status").status_code == 200  # still signed in


def test_sessions_expire_server_side_after_12_hours(app: Flask) -> None:
    browser = app.test_client()
    _sign_in(browser, _key(app))
    assert browser.get("/admin/api/status").status_code == 200
    from web.auth import SIGN_INS

    sign_ins = app.extensions[SIGN_INS]
    clock = sign_ins.clock
    sign_ins.clock = lambda: clock() + 11.9 * 3600
    assert browser.get("/admin/api/status").status_code == 200
    sign_ins.clock = lambda: clock() + 12.1 * 3600
    assert browser.get("/admin/api/status").status_code == 401
    assert browser.get("/admin/").status_code == 302


def _later(app: Flask, seconds: float) -> None:
    """Move the failure limit's clock forward."""
    from web.auth import FAILURES

    failures = app.extensions[FAILURES]
    clock = failures.clock
    failures.clock = lambda: clock() + seconds


def test_wrong_api_keys_are_rate_limited_per_address(app: Flask) -> None:
    client = app.test_client()
    wrong = {"Authorization": "Bearer not-the-key"}
    right = {"Authorization": f"Bearer {_key(app)}"}
    for _ in range(10):
        assert client.get("/admin/api/jobs", headers=wrong).status_code == 401
    limited = client.get("/admin/api/jobs", headers=wrong)
    assert limited.status_code == 429 and limited.get_json()["error"] == "too_many_requests"
    assert int(limited.headers["Retry-After"]) in range(1, 61)
    # While blocked, the right key gets 429 too: a different answer would let guessing go on.
    assert client.get("/admin/api/jobs", headers=right).status_code == 429
    assert client.post("/v1/items", json={"id": "a"}, headers=wrong).status_code == 429
    other = {"REMOTE_ADDR": "10.0.0.7"}
    assert client.get("/admin/api/jobs", headers=right, environ_base=other).status_code == 200
    assert client.get("/admin/api/jobs", headers=wrong, environ_base=other).status_code == 401
    _later(app, 61)
    assert client.get("/admin/api/jobs", headers=right).status_code == 200


def test_right_keys_are_not_limited(app: Flask) -> None:
    client = app.test_client()
    wrong = {"Authorization": "Bearer not-the-key"}
    right = {"Authorization": f"Bearer {_key(app)}"}
    for _ in range(30):
        assert client.get("/admin/api/jobs", headers=right).status_code == 200
    for _ in range(9):
        assert client.get("/admin/api/jobs", headers=wrong).status_code == 401
    assert client.get("/admin/api/jobs", headers=right).status_code == 200
    assert client.get("/admin/api/jobs").status_code == 401  # no key is no guess


def test_failed_sign_ins_are_rate_limited_with_wrong_keys(app: Flask) -> None:
    browser = app.test_client()
    token = _csrf(browser.get("/admin/login").get_data(as_text=True))
    for _ in range(5):
        wrong = browser.post("/admin/login", data={"csrf": token, "password": "nope"})
        assert wrong.status_code == 401
    for _ in range(5):
        wrong_key = {"Authorization": "Bearer nope"}
        assert browser.get("/admin/api/jobs", headers=wrong_key).status_code == 401
    limited = browser.post("/admin/login", data={"csrf": token, "password": _key(app)})
    assert limited.status_code == 429 and "Too many" in limited.get_data(as_text=True)
    assert int(limited.headers["Retry-After"]) in range(1, 61)
    _later(app, 61)
    _sign_in(browser, _key(app))


@pytest.mark.parametrize("token", ["é", "☃", "\udfff"])
def test_non_ascii_tokens_are_refused_not_crashed(app: Flask, token: str) -> None:
    browser = app.test_client()
    browser.get("/admin/login")
    if token != "\udfff":  # a form cannot carry a lone surrogate
        form = browser.post("/admin/login", data={"csrf": token, "password": _key(app)})
        assert form.status_code == 403
        fresh = _csrf(browser.get("/admin/login").get_data(as_text=True))
        password = browser.post("/admin/login", data={"csrf": fresh, "password": token})
        assert password.status_code == 401
    _sign_in(browser, _key(app))
    header = browser.post("/admin/api/rebuild", headers={"X-CSRF-Token": token})
    assert header.status_code == 403 and header.get_json()["error"] == "forbidden"
    bearer = app.test_client().get("/admin/api/jobs", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 401 and bearer.get_json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin/api/rebuild"),
        ("GET", "/v1/search?q=beach"),
        ("POST", "/admin/login"),
        ("GET", "/healthz"),
    ],
)
def test_oversized_bodies_are_refused_before_any_view(
    client: Any, runtime: Runtime, method: str, path: str
) -> None:
    response = client.open(path, method=method, data=b"x" * BIG)
    assert response.status_code == 413
    assert response.get_json()["error"] == "request_entity_too_large"
    assert "16777216 bytes" in response.get_json()["message"]
    assert client.get("/admin/api/jobs").get_json()["jobs"] == []  # no rebuild started


def test_chunked_bodies_are_bounded_too(client: Any) -> None:
    chunked = {"Transfer-Encoding": "chunked"}
    terminated = {"wsgi.input_terminated": True}  # a server that removed the chunking
    big = client.post(
        "/admin/api/rebuild",
        input_stream=io.BytesIO(b"x" * BIG),
        headers=chunked,
        environ_overrides=terminated,
    )
    assert big.status_code == 413
    assert client.get("/admin/api/jobs").get_json()["jobs"] == []
    small = client.post(
        "/admin/api/rollback",
        input_stream=io.BytesIO(b'{"version": ""}'),
        headers={**chunked, "Content-Type": "application/json"},
        environ_overrides=terminated,
    )
    assert small.status_code == 422 and "version" in small.get_json()["message"]
    limit = 16 * 1024 * 1024
    for size, expected in ((limit, 200), (limit + 1, 413)):  # werkzeug alone cuts at the limit
        probe = client.get(
            "/healthz",
            input_stream=io.BytesIO(b"x" * size),
            headers=chunked,
            environ_overrides=terminated,
        )
        assert probe.status_code == expected, size


def test_the_sign_in_cookie_is_read_and_written_under_admin_only(app: Flask) -> None:
    """Outside /admin no session is opened: the cookie a signed-in browser sends along is
    neither read (the API still wants its key) nor rewritten, and it still signs in after."""
    browser = app.test_client()
    _sign_in(browser, _key(app))
    cookie = browser.get_cookie("session")
    assert cookie is not None
    for path in ("/healthz", "/v1/users/someone", "/openapi.json", "/admin-not"):
        response = browser.get(path)
        assert "Set-Cookie" not in response.headers, path
        assert "Cookie" not in response.vary, path
    assert browser.get("/v1/users/someone").status_code == 401  # the session is not a key
    assert browser.get_cookie("session").value == cookie.value
    assert browser.get("/admin/api/status").status_code == 200  # still signed in
    page = browser.get("/admin/")
    assert page.status_code == 200
    assert "Cookie" in page.vary  # under /admin the session is read, as before
    fresh = app.test_client().get("/admin/login")  # a form's CSRF token sets the cookie
    assert "Set-Cookie" in fresh.headers
