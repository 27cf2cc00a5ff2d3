"""One JSON error shape, {"error", "message"}, for engine errors and HTTP errors alike."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app
from sqlalchemy.engine import make_url
from werkzeug.exceptions import HTTPException

from engine.core.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    NotPermitted,
    NotReady,
    Problem,
    RecsearchError,
    TooLarge,
    Unauthenticated,
)
from engine.store.outage import RETRY_AFTER_S, outage_of
from web.contract import respond
from web.extensions import runtime_of
from web.schemas import ErrorBody

log = logging.getLogger(__name__)

STATUS: dict[type[RecsearchError], tuple[int, str]] = {
    NotFound: (404, "not_found"),
    InvalidInput: (422, "invalid_input"),
    TooLarge: (413, "too_large"),
    NotReady: (503, "not_ready"),
    Conflict: (409, "conflict"),
    ConfigError: (500, "config_error"),
    Unauthenticated: (401, "unauthorized"),
    NotPermitted: (403, "insufficient_scope"),  # RFC 6750: a valid key, too narrow a scope
}


def error_response(
    status: int, error: str, message: str, problems: list[Problem] | None = None
) -> Response:
    return respond(ErrorBody(error=error, message=message, problems=problems or None), status)


def register(app: Flask) -> None:
    @app.errorhandler(RecsearchError)
    def engine_error(exc: RecsearchError) -> Response:
        status, code = next(
            (v for cls, v in STATUS.items() if isinstance(exc, cls)), (500, "internal_error")
        )
        problems = exc.problems if isinstance(exc, InvalidInput) else None
        if status >= 500 and status != 503:
            log.error("engine error: %s", exc)
        response = error_response(status, code, str(exc), problems)
        if status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"the request body is larger than the limit of {limit} bytes"
        response = error_response(exc.code or 500, code, message)
        # Keep what the exception says besides its HTML body: Retry-After, Allow, ...
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers.add(name, value)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        outage = outage_of(exc, _database())
        if outage is not None:  # the database is away for a moment: say when to come back
            log.warning("%s (%s): %s", outage.code, type(exc).__name__, _first_line(exc))
            response = error_response(outage.status, outage.code, outage.message)
            response.headers["Retry-After"] = str(outage.retry_after_s)
            return response
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log")


def _database() -> str:
    """The database as a 507 names it: SQLite's file, or PostgreSQL's host and database."""
    try:
        url = make_url(runtime_of(current_app).settings.db_url)
    except Exception:  # no app or runtime here: say it plainly
        return "the database"
    if url.get_backend_name() == "sqlite":
        return str(url.database)
    return f"PostgreSQL at {url.host}:{url.port or 5432}/{url.database}"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]
