"""The Flask app factory: the /v1 API, the health probes, the admin page and its API, /metrics
and /openapi.json over one engine Runtime."""

from __future__ import annotations

import logging

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

from engine.core.config import Settings
from engine.runtime import Runtime
from web import admin, api, auth, errors, metrics, openapi, ratelimit
from web.extensions import EXTENSION, IN_FLIGHT
from web.inflight import InFlight
from web.json_provider import OrjsonProvider
from web.proxy import trust_proxies


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    loopback: bool = False,
    in_flight: InFlight | None = None,
) -> Flask:
    """Build the app; engine objects live in app.extensions["recsearch"] as a Runtime.

    With no arguments it reads RECSEARCH_* from the environment (what gunicorn calls:
    `gunicorn -w 4 'web:create_app()'`). loopback says the server listens on 127.0.0.1 only,
    which opens search, events and /metrics without a key under RECSEARCH_OPEN_ENDPOINTS=auto.
    in_flight counts the requests under way (web.inflight; `recsearch serve` shares one
    between its workers), app.extensions["recsearch.in_flight"].
    """
    if runtime is None:
        runtime = Runtime(settings or Settings.from_env())
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.max_request_bytes
    app.json = OrjsonProvider(app)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = runtime

    metrics.init(app)  # first: its timer starts before any other hook can refuse a request
    # Behind a proxy on the same host every client arrives from loopback: "auto" opens nothing.
    proxies = runtime.settings.trusted_proxies
    auth.init(app, runtime.settings, loopback and not proxies.strip())
    ratelimit.init(app, runtime.settings)  # before any hook reads a body
    app.config.update(
        # The admin sign-in cookie: HTTPS-only unless served on loopback, hidden from scripts,
        # and expiring (web/auth.py also ends the session server-side at the same age).
        SESSION_COOKIE_SECURE=not loopback,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=auth.SESSION_LIFETIME,
    )
    app.before_request(_bounded_body)
    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.health)
    admin.init(app)
    openapi.init(app)
    in_flight = in_flight or InFlight()
    app.extensions[IN_FLIGHT] = in_flight
    app.wsgi_app = in_flight.wrap(trust_proxies(app.wsgi_app, proxies))  # type: ignore[method-assign]
    logging.getLogger(__name__).info("recsearch app ready on %s", runtime.settings.db_url)
    return app


def _bounded_body() -> None:
    """Refuse a body over MAX_CONTENT_LENGTH (413) before any view, read or not.

    Werkzeug checks a declared length only when a view reads the body, and cuts a chunked
    body (no length) at the limit without a word. So a declared length is checked here, and
    a chunked body is read here, up to the limit, and kept for the view.
    """
    environ = request.environ
    if "CONTENT_LENGTH" not in environ and "HTTP_TRANSFER_ENCODING" not in environ:
        return  # no body (a search's GET): nothing to bound, without parsing any header
    limit = request.max_content_length
    length = request.content_length
    if limit is None:
        return
    if length is not None:
        if length > limit:
            raise RequestEntityTooLarge()
    elif "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        data = request.get_data(cache=True)  # at most `limit` bytes
        if len(data) >= limit and request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()  # more was sent than werkzeug let through
