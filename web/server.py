"""`recsearch serve`: gunicorn with N workers, each loading the app after the fork.

Why these choices:
- No preload: each worker builds its own Runtime (database pool, encoder, index) after the
  fork. ONNX Runtime and torch thread pools do not survive a fork, and a pool shared by
  copy-on-write would be touched by every worker anyway.
- Thread budget: workers × encoder threads ≤ cores. Oversubscribed pools turned a 15 ms
  query into 230 ms on a busy 2-core machine (NOTES.md), so each worker gets
  max(1, cores // workers) encoder threads unless RECSEARCH_ENCODER_THREADS says otherwise,
  and OMP/MKL pools the same.
- gthread workers: a request waits on SQL and the encoder, so a few threads per worker
  overlap those waits; `--threads` sets how many.
- SIGTERM drains: gunicorn stops accepting, lets in-flight requests finish within
  graceful_timeout, then exits; a worker that dies is replaced by the arbiter.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from engine.config import Settings

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 4
GRACEFUL_TIMEOUT_S = 30


def cores() -> int:
    """The cores this process may really use (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def encoder_threads(settings: Settings, workers: int) -> int:
    """Encoder threads per worker so that workers × threads ≤ cores."""
    configured = int(getattr(settings, "encoder_threads", 0) or 0)
    return configured if configured > 0 else max(1, cores() // max(1, workers))


def run(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int = DEFAULT_WORKERS,
    threads: int = DEFAULT_THREADS,
    timeout_s: int = 120,
) -> None:
    """Serve until SIGTERM/SIGINT (drains in-flight requests first)."""
    from gunicorn.app.base import BaseApplication

    per_worker = encoder_threads(settings, workers)
    if hasattr(settings, "encoder_threads"):
        settings = settings.replace(encoder_threads=per_worker)
    # Native pools read these when they start, which is after the fork in each worker.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(per_worker)
    loopback = host in LOCAL_HOSTS
    options: dict[str, Any] = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "preload_app": False,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "timeout": timeout_s,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "post_fork": _post_fork(per_worker),
    }

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from web import create_app

            app = create_app(settings, loopback=loopback)
            runtime = app.extensions["recsearch"]
            runtime.searcher  # load the model and index now, not during the first request  # noqa: B018
            return app

    log.info(
        "serving on %s:%s with %d workers × %d threads, %d encoder threads each",
        host,
        port,
        workers,
        threads,
        per_worker,
    )
    Server().run()


def _post_fork(threads: int) -> Any:
    def post_fork(server: Any, worker: Any) -> None:
        # A torch imported before the fork sized its pool for the whole machine; one imported
        # later in the worker reads OMP_NUM_THREADS instead.
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(threads)

    return post_fork
