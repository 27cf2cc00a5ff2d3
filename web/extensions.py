"""What the app keeps in app.extensions: the engine's Runtime, shared by every view."""

from __future__ import annotations

from flask import Flask

from engine.runtime import Runtime

EXTENSION = "recsearch"


def runtime_of(app: Flask) -> Runtime:
    return app.extensions[EXTENSION]  # type: ignore[no-any-return]
