"""The Flask app: the /v1 REST API over the engine (and, later, the /admin page)."""

from __future__ import annotations

import logging

from flask import Flask

from engine.config import Settings
from engine.runtime import Runtime

EXTENSION = "recsearch"


def create_app(
    settings: Settings | None = None, *, runtime: Runtime | None = None, loopback: bool = False
) -> Flask:
    """Build the app; engine objects live in app.extensions["recsearch"] as a Runtime.

    With no arguments it reads RECSEARCH_* from the environment (what gunicorn calls:
    `gunicorn -w 4 'web:create_app()'`). loopback says the server listens on 127.0.0.1 only,
    which opens search and events without a key under RECSEARCH_OPEN_ENDPOINTS=auto.
    """
    if runtime is None:
        runtime = Runtime(settings or Settings.from_env())
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = runtime.settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = runtime

    from web import admin, api, auth, errors

    auth.init(app, runtime.settings, loopback)
    errors.register(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.health)
    admin.init(app)
    logging.getLogger(__name__).info("recsearch app ready on %s", runtime.settings.db_url)
    return app


def runtime_of(app: Flask) -> Runtime:
    return app.extensions[EXTENSION]  # type: ignore[no-any-return]
