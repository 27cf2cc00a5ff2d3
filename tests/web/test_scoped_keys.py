"""Scoped API keys: every route of the app against every kind of credential, as one table
says (a new route fails until the table says who may call it); `recsearch key create / list /
revoke`; keys stored hashed, checked by every server sharing the database, and a revoke
reaching another server within the cache's bound. On SQLite and PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from sqlalchemy import select

from engine.core.clock import utcnow
from engine.core.errors import InvalidInput, NotFound, Unauthenticated
from engine.runtime import Runtime
from engine.store import api_keys
from engine.store.models import ApiKey
from tests.conftest import ROOT
from web import create_app
from web.cli import Context, cli

# Who may call each route: "public" (no key is looked at), or the scope a key needs.
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/openapi.json"): "public",
    ("GET", "/docs"): "public",
    ("GET", "/static/<path:filename>"): "public",
    ("GET", "/admin/static/<path:filename>"): "public",
    ("GET", "/admin/"): "public",  # the page: a redirect to the sign-in form without a session
    ("GET", "/admin/login"): "public",
    ("POST", "/admin/login"): "public",
    ("POST", "/admin/logout"): "public",
    ("GET", "/v1/search"): "search",
    ("POST", "/v1/search"): "search",
    ("GET", "/v1/items/<path:item_id>"): "search",
    ("GET", "/v1/items/<path:item_id>/similar"): "search",
    ("POST", "/v1/events"): "events",
    ("POST", "/v1/items"): "admin",
    ("DELETE", "/v1/items/<path:item_id>"): "admin",
    ("GET", "/v1/users/<path:user_id>"): "admin",  # a user's history: personal data
    ("GET", "/metrics"): "admin",
    **{
        (method, f"/admin/api{path}"): "admin"
        for method, path in [
            ("GET", "/status"),
            ("GET", "/search"),
            ("GET", "/jobs"),
            ("GET", "/jobs/<int:job_id>"),
            ("POST", "/jobs/<int:job_id>/cancel"),
            ("POST", "/rebuild"),
            ("POST", "/train"),
            ("POST", "/train-encoder"),
            ("POST", "/rollback"),
            ("POST", "/promote"),
            ("POST", "/rules"),
            ("GET", "/rules"),
            ("DELETE", "/rules/<int:rule_id>"),
            ("POST", "/experiments"),
            ("GET", "/experiments"),
            ("GET", "/experiments/<int:experiment_id>"),
            ("POST", "/experiments/<int:experiment_id>/stop"),
            ("POST", "/experiments/<int:experiment_id>/promote"),
            ("GET", "/users/<path:user_id>"),
            ("GET", "/items/<path:item_id>"),
        ]
    },
}
# What a valid key of each scope may call; the data dir's key is an admin key.
PERMITS = {
    "search": {"search"},
    "events": {"search", "events"},
    "admin": {"search", "events", "admin"},
}
# Keys that are refused whatever the route: the word the 401 uses for each.
REFUSED = {"unknown": "unknown", "revoked": "revoked", "expired": "expired"}
CREDENTIALS = ["none", "datadir", "search", "events", "admin", *REFUSED]
_PLACEHOLDER = re.compile(r"<(?:(\w+):)?\w+>")


def _routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }


def _url(rule: str) -> str:
    """The rule with its variables filled: an id no row has, so nothing is found or changed."""
    return _PLACEHOLDER.sub(lambda m: "999999" if m.group(1) == "int" else "nope", rule)


def _keys(runtime: Runtime, app: Flask) -> dict[str, str]:
    """A key of each credential kind; "none" sends no header."""
    now = utcnow()
    with runtime.session() as session:
        keys = {s: api_keys.create(session, s, name=f"{s} key").key for s in PERMITS}
        revoked = api_keys.create(session, "admin", name="revoked").key
        api_keys.revoke(session, revoked)
        expired = api_keys.create(
            session, "admin", expires_at=now - timedelta(hours=1), now=now - timedelta(days=1)
        ).key
    return {
        **keys,
        "datadir": app.config["RECSEARCH_API_KEY"],
        "revoked": revoked,
        "expired": expired,
        "unknown": "rs_admin_" + "x" * 43,
    }


def test_every_route_answers_every_credential_as_the_table_says(runtime: Runtime) -> None:
    app = create_app(runtime=runtime)  # off loopback: no area is open
    assert _routes(app) == set(ROUTES), "add the new route to ROUTES, with who may call it"
    keys = _keys(runtime, app)
    client = app.test_client()
    wrong: list[str] = []
    public: dict[tuple[str, str], int] = {}
    for n, (credential, (method, rule)) in enumerate(
        (c, r) for c in CREDENTIALS for r in sorted(ROUTES)
    ):
        headers = {} if credential == "none" else {"Authorization": f"Bearer {keys[credential]}"}
        # An address each: refused keys would otherwise meet the limit on wrong keys (429).
        address = {"REMOTE_ADDR": f"10.0.{n // 250}.{n % 250}"}
        response = client.open(
            _url(rule),
            method=method,
            headers=headers,
            json={"bogus": True} if method != "GET" else None,  # a 422 where the view runs
            environ_base=address,
        )
        got = response.status_code
        error = (response.get_json(silent=True) or {}).get("error")
        message = (response.get_json(silent=True) or {}).get("message", "")
        needed = ROUTES[(method, rule)]
        where = f"{credential:>8} {method:6} {rule}: {got} {error} {message[:100]}"
        if needed == "public":
            # The key is never looked at: every credential gets what no credential gets.
            is_refused = got in (401, 403) and error in ("unauthorized", "insufficient_scope")
            if public.setdefault((method, rule), got) != got or is_refused:
                wrong.append(f"{where} (public)")
        elif credential == "none":
            if (got, error) != (401, "unauthorized") or "Bearer" not in message:
                wrong.append(f"{where} (wanted 401: no key)")
        elif credential in REFUSED:
            if (got, error) != (401, "unauthorized") or REFUSED[credential] not in message:
                wrong.append(f"{where} (wanted 401: {REFUSED[credential]})")
        elif needed in PERMITS["admin" if credential == "datadir" else credential]:
            if got in (401, 403) or got >= 500 and got != 503:
                wrong.append(f"{where} (wanted through)")
        elif (got, error) != (403, "insufficient_scope") or f"scope {needed!r}" not in message:
            wrong.append(f"{where} (wanted 403 naming {needed!r})")
    assert not wrong, "\n".join(wrong)
    assert n + 1 == len(CREDENTIALS) * len(ROUTES) == 8 * 39  # the matrix
    jobs = client.get("/admin/api/jobs", headers={"Authorization": f"Bearer {keys['admin']}"})
    assert jobs.get_json()["jobs"] == []  # the bogus bodies started nothing


def test_open_areas_take_no_key_at_all(runtime: Runtime) -> None:
    """On loopback search, events and /metrics are open: no key, or any key, is let through;
    everything else still wants its scope."""
    app = create_app(runtime=runtime, loopback=True)
    keys = _keys(runtime, app)
    client = app.test_client()
    for credential in ("none", "revoked", "search"):
        headers = {} if credential == "none" else {"Authorization": f"Bearer {keys[credential]}"}
        assert client.get("/v1/items/nope", headers=headers).status_code == 404
        assert client.post("/v1/events", json={}, headers=headers).status_code == 422
        assert client.get("/metrics", headers=headers).status_code == 200
    search = {"Authorization": f"Bearer {keys['search']}"}
    refused = client.post("/v1/items", json={"id": "a", "title": "A"}, headers=search)
    assert refused.status_code == 403 and "'admin'" in refused.get_json()["message"]


def _run(runtime: Runtime, *args: str) -> Result:
    context = Context(runtime.settings, quiet=True, runtime=runtime)
    return CliRunner().invoke(cli, ["key", *args], obj=context)


def test_key_create_list_revoke(runtime: Runtime) -> None:
    app = create_app(runtime=runtime)
    created = _run(
        runtime, "create", "--scope", "search", "--name", "shop front", "--expires", "30d"
    )
    assert created.exit_code == 0, created.output
    lines = created.output.splitlines()
    key = lines[-1]
    assert re.fullmatch(r"rs_search_[A-Za-z0-9_-]{43}", key), created.output
    assert "shop front" in lines[0] and "scope search" in lines[0] and "expires 20" in lines[0]
    assert key not in "\n".join(lines[:-1])  # alone on its line, and only there
    with runtime.session() as session:  # stored as its SHA-256 and a public prefix only
        row = session.scalars(select(ApiKey)).one()
    assert row.key_hash == api_keys.hash_key(key) and key.startswith(row.prefix)
    assert len(row.prefix) == len("rs_search_") + 8 and row.expires_at is not None
    assert 29.9 < (row.expires_at - utcnow()).total_seconds() / 86400 <= 30

    client = app.test_client()
    bearer = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/items/nope", headers=bearer).status_code == 404  # let through
    listed = _run(runtime, "list").output
    assert key not in listed and row.prefix in listed and "shop front" in listed
    assert listed.splitlines()[0].split()[:4] == ["id", "prefix", "scope", "state"]
    assert " search " in listed and " active " in listed

    runtime.api_keys.write_uses()  # what the background thread does once a minute
    with runtime.session() as session:
        used_at = session.scalars(select(ApiKey.last_used_at)).one()
    assert used_at is not None and abs((utcnow() - used_at).total_seconds()) < 60

    revoked = _run(runtime, "revoke", row.prefix)
    assert revoked.exit_code == 0 and "revoked key 1" in revoked.output
    assert "already revoked" in _run(runtime, "revoke", "1").output
    refused = client.get("/v1/items/nope", headers=bearer)  # this process: at once
    assert refused.status_code == 401 and "revoked" in refused.get_json()["message"]
    assert " revoked " in _run(runtime, "list").output
    missing = _run(runtime, "revoke", "rs_admin_nothere1")
    assert missing.exit_code != 0 and isinstance(missing.exception, NotFound)
    assert "'rs_admin_nothere1'" in str(missing.exception)


@pytest.mark.parametrize("expires", ["tomorrow", "2020-01-01", "-3d"])
def test_bad_expiry_is_a_usage_error_naming_it(runtime: Runtime, expires: str) -> None:
    result = _run(runtime, "create", "--scope", "events", "--expires", expires)
    assert result.exit_code == 2 and f"'{expires}'" in result.output, result.output
    assert "Invalid value for '--expires'" in result.output
    with runtime.session() as session:
        assert session.scalars(select(ApiKey)).all() == []


def test_bad_scope_is_a_usage_error(runtime: Runtime) -> None:
    result = _run(runtime, "create", "--scope", "write")
    assert result.exit_code == 2 and "'write'" in result.output


def test_a_revoke_reaches_another_server_within_the_cache_bound(runtime: Runtime) -> None:
    """Two servers (runtimes, each with its own cache) on one database: a key created on
    one works on the other; revoked on the first, the second refuses it once CACHE_S has
    passed since it last read the key, and not a request later."""
    other = Runtime(runtime.settings, embedder=runtime.embedder)
    try:
        first, second = create_app(runtime=runtime), create_app(runtime=other)
        with runtime.session() as session:
            key = api_keys.create(session, "events").key
        bearer = {"Authorization": f"Bearer {key}"}
        assert second.test_client().get("/v1/items/nope", headers=bearer).status_code == 404
        assert _run(runtime, "revoke", key).exit_code == 0  # the whole key names it too
        assert first.test_client().get("/v1/items/nope", headers=bearer).status_code == 401
        cache = other.api_keys
        read_at = cache.clock()
        cache.clock = lambda: read_at + api_keys.CACHE_S - 0.1  # still trusted
        assert second.test_client().get("/v1/items/nope", headers=bearer).status_code == 404
        cache.clock = lambda: read_at + api_keys.CACHE_S  # the bound: read again, refused
        refused = second.test_client().get("/v1/items/nope", headers=bearer)
        assert refused.status_code == 401 and "revoked" in refused.get_json()["message"]
    finally:
        other.close()


def test_keys_expire_at_once_without_a_cache_round(runtime: Runtime) -> None:
    with runtime.session() as session:
        key = api_keys.create(session, "search", expires_at=utcnow() + timedelta(hours=1)).key
    cache = runtime.api_keys
    assert cache.verify(key).scope == "search"
    cache.now = lambda: utcnow() + timedelta(hours=1, seconds=1)
    with pytest.raises(Unauthenticated, match="expired at"):
        cache.verify(key)  # cached: no SQL read, still refused
    for near_miss in (key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x", key[:20]):
        with pytest.raises(Unauthenticated, match="unknown"):
            cache.verify(near_miss)  # the prefix finds the row, the hash refuses


def test_a_key_made_by_the_command_in_another_process_works_here(runtime: Runtime) -> None:
    """`recsearch key create` as its own process (the real entry point) on the same database;
    this server accepts the key it printed last."""
    settings = runtime.settings
    env = {
        **os.environ,
        "RECSEARCH_DATA_DIR": str(settings.data_dir),
        "RECSEARCH_DATABASE_URL": settings.db_url,
    }
    done = subprocess.run(
        [sys.executable, "-m", "web.cli", "key", "create", "--scope", "admin", "--name", "ci"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.splitlines()[-1]
    client = create_app(runtime=runtime).test_client()
    bearer = {"Authorization": f"Bearer {key}"}
    assert client.get("/admin/api/jobs", headers=bearer).get_json() == {"jobs": []}


def test_create_refuses_what_it_cannot_store(runtime: Runtime) -> None:
    with runtime.session() as session:
        with pytest.raises(InvalidInput, match="'write'"):
            api_keys.create(session, "write")
        with pytest.raises(InvalidInput, match="not in the future"):
            api_keys.create(session, "search", expires_at=utcnow() - timedelta(seconds=1))
        with pytest.raises(InvalidInput, match="at most 200 characters"):
            api_keys.create(session, "search", name="n" * 201)


@pytest.mark.parametrize(
    ("text", "hours"),
    [("30d", 720), ("12h", 12), ("90m", 1.5), ("2w", 336), ("2030-01-01T01:00+01:00", None)],
)
def test_expiry_forms(text: str, hours: float | None) -> None:
    now = utcnow()
    when = api_keys.parse_expiry(text, now)
    if hours is not None:
        assert when - now == timedelta(hours=hours)
    else:
        assert when.isoformat() == "2030-01-01T00:00:00"  # UTC, naive as stored


def test_scopes_nest() -> None:
    for scope, permits in PERMITS.items():
        for needed in api_keys.SCOPES:
            assert api_keys.allows(scope, needed) is (needed in permits)
    assert not api_keys.allows("nonsense", "search")
    assert api_keys.prefix_of("rs_events_" + "A" * 43) == "rs_events_AAAAAAAA"
    assert api_keys.prefix_of("rs_root_" + "A" * 43) is None
    assert api_keys.prefix_of("not-a-key") is None
