"""The web layer: the Flask app (the /v1 API, the admin page, /metrics, /openapi.json), the
server that runs it, and the `recsearch` command line (web.cli), above indexer/ and engine/.

`gunicorn 'web:create_app()'` serves it; `recsearch serve` does that with tuned workers.
create_app and runtime_of load Flask and the engine on first use, so that importing web.cli
(every `recsearch` command) does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from web.app import create_app
    from web.extensions import runtime_of

__all__ = ["create_app", "runtime_of"]


def __getattr__(name: str) -> Any:
    """`from web import create_app` (and gunicorn's `web:create_app()`) import web.app then."""
    if name == "create_app":
        from web.app import create_app

        return create_app
    if name == "runtime_of":
        from web.extensions import runtime_of

        return runtime_of
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
