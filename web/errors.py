"""One JSON error shape, {"error", "message"}, for engine errors and HTTP errors alike."""

from __future__ import annotations

import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from engine.core.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    NotReady,
    Problem,
    RecsearchError,
    TooLarge,
)
from web.contract import respond
from web.schemas import ErrorBody

log = logging.getLogger(__name__)

STATUS: dict[type[RecsearchError], tuple[int, str]] = {
    NotFound: (404, "not_found"),
    InvalidInput: (422, "invalid_input"),
    TooLarge: (413, "too_large"),
    NotReady: (503, "not_ready"),
    Conflict: (409, "conflict"),
    ConfigError: (500, "config_error"),
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
        return error_response(status, code, str(exc), problems)

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
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; see the server log")
