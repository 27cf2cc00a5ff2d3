"""The web layer: the Flask app (the /v1 API, the admin page, /metrics, /openapi.json), the
server that runs it, and the `recsearch` command line (web.cli), above indexer/ and engine/.

`gunicorn 'web:create_app()'` serves it; `recsearch serve` does that with tuned workers.
"""

from __future__ import annotations

from web.app import create_app
from web.extensions import runtime_of

__all__ = ["create_app", "runtime_of"]
