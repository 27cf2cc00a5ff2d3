"""API keys: every write endpoint and the admin API need `Authorization: Bearer <key>`;
search and events are open or keyed by configuration (open on 127.0.0.1 by default)."""

from __future__ import annotations

import hmac
import logging

from flask import Flask, current_app, request
from werkzeug.exceptions import Forbidden, Unauthorized

from engine.config import Settings
from engine.secrets import api_key

log = logging.getLogger(__name__)
OPEN_AREAS = ("search", "events")


def open_areas(settings: Settings, loopback: bool) -> set[str]:
    """Which of search/events answer without a key: 'auto' opens both only on loopback."""
    value = settings.open_endpoints.strip().lower()
    if value == "auto":
        return set(OPEN_AREAS) if loopback else set()
    if value in ("", "none"):
        return set()
    return {part.strip() for part in value.split(",") if part.strip()}


def init(app: Flask, settings: Settings, loopback: bool) -> None:
    app.config["RECSEARCH_API_KEY"] = api_key(settings)
    app.config["RECSEARCH_OPEN"] = open_areas(settings, loopback)


def require_key(area: str | None = None) -> None:
    """Raise 401 without a key and 403 with a wrong one, unless `area` is configured open."""
    if area is not None and area in current_app.config["RECSEARCH_OPEN"]:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the API key as `Authorization: Bearer <key>`")
    expected = current_app.config["RECSEARCH_API_KEY"]
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Forbidden("wrong API key")
