"""`recsearch serve`: gunicorn with N workers, each loading the app after the fork.

Why these choices:
- No preload: each worker builds its own Runtime (database pool, encoder, index) after the
  fork. ONNX Runtime and torch thread pools do not survive a fork, and a pool shared by
  copy-on-write would be touched by every worker anyway.
- Thread budget (pool_threads, encoder_threads): pools that spin while they wait (torch's
  OpenMP, MKL, OpenBLAS) get max(1, cores // workers) threads per worker, so workers ×
  threads ≤ cores: oversubscribed, they turned a 15 ms torch query into 233 ms on a busy
  2-core machine (NOTES.md). ONNX Runtime's pool does not spin here (engine.encoder.onnx_encoder),
  so each worker's ONNX encoder gets every core, used only while its request is the only
  one under way in the server (web.inflight counts them across workers, Runtime.share_cores):
  a lone request encodes on all the cores, a crowded one on one thread of a second session,
  leaving the other cores to the requests beside it. RECSEARCH_ENCODER_THREADS overrides
  both (1: always one thread).
- gthread workers: a request waits on SQL and the encoder, so a few threads per worker
  overlap those waits; `--threads` sets how many.
- Requests gunicorn refuses before the app sees them (a request line over
  LIMIT_REQUEST_LINE_BYTES, a header with a NUL or a bad name, a broken chunk) are answered
  in the API's JSON shape {"error", "message"}, not gunicorn's HTML page, and a response
  goes out in one write, head and body (web.worker).
- SIGTERM drains: gunicorn stops accepting, lets in-flight requests finish within
  graceful_timeout, then exits; a worker that dies is replaced by the arbiter.
- One line says when the server is ready (Readiness): the worker that finishes loading last
  logs "recsearch ready on URL: N workers loaded X s after listening", with the index it
  serves. A worker loads in a couple of seconds: the ONNX encoder (no torch, no transformers:
  engine.encoder.onnx_cache) and the index version.
- Metrics add up across workers: prometheus_client's multiprocess mode, in a folder made
  fresh for this server start under /dev/shm (metrics_root: 0700; not the data dir, whose
  disk may fill), set in the
  environment before any worker imports prometheus_client; child_exit marks a dead worker so
  its per-process gauges leave with it (its counts stay); the folder is removed on exit.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.core import processes
from engine.core.config import Settings
from engine.core.files import make_private_dir
from engine.core.processes import remove_leftovers
from web.inflight import InFlight
from web.worker import Connections, serving_worker

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 4
GRACEFUL_TIMEOUT_S = 30
# The longest request line (method, path and query string) gunicorn reads: its maximum short
# of unlimited, which it reads by copying the buffer again per chunk. 50 context_items of 150
# ASCII characters fit in a GET; a longer one gets a JSON 414 (use POST /v1/search).
LIMIT_REQUEST_LINE_BYTES = 8190


def cores() -> int:
    """The cores this process may really use (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def pool_threads(settings: Settings, workers: int) -> int:
    """Threads per worker for pools that spin while they wait (OpenMP, MKL, OpenBLAS, torch):
    workers × threads ≤ cores."""
    configured = int(getattr(settings, "encoder_threads", 0) or 0)
    return configured if configured > 0 else max(1, cores() // max(1, workers))


def encoder_threads(settings: Settings, workers: int) -> int:
    """The encoder's threads per worker: the spinning pools' share for torch; every core for
    ONNX Runtime, whose pool sleeps when idle.

    bench/rest_throughput.py on SciFact, 2 workers on 2 cores, one run, interleaved (requests/s,
    p50 / p99 ms), 1 vs 2 ONNX threads per worker: at 1 connection 89.1 (10.9 / 17.4) vs
    120.1 (8.0 / 13.4), where the dev server (one process, 2 threads) did 101–109; at 4
    connections 177.9 (21.9 / 44.2) vs 157.8 (24.6 / 49.4); at 16 178.5 (88.2 / 168.6) vs
    162.8 (97.0 / 148.9). One thread per worker left a core idle whenever one request ran
    alone, and made `serve` slower than `--dev` at one connection; every core gives up about
    a tenth of the throughput at saturation for a quarter off the latency of a lone request.
    Since Runtime.share_cores the server takes both sides: every core for a lone request,
    one thread while others are under way. bench/serve_load.py, search only, serve-sqlite,
    one session, every core always / shared / one thread (requests/s, p99 ms): at 1
    connection 93.9 and 84.4 (18.0, 19.4) / 91.4 and 77.9 (18.3, 20.6) / 73.7 (22.0); at 4
    85.9 and 128.6 (80.0, 90.2) / 139.8 and 139.6 (50.7, 49.0) / 138.1 (51.1); at 16 136.0
    and 143.8 (184.7, 170.3) / 141.6 and 135.8 (168.1, 171.5) / 136.3 (218.1).
    """
    configured = int(getattr(settings, "encoder_threads", 0) or 0)
    if configured > 0 or getattr(settings, "encoder", "onnx") == "torch":
        return pool_threads(settings, workers)
    return cores()


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
    spinning = pool_threads(settings, workers)
    if hasattr(settings, "encoder_threads"):
        settings = settings.replace(encoder_threads=per_worker)
    # Native pools read these when they start, which is after the fork in each worker.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(spinning)
    metrics_dir = fresh_metrics_dir()
    use_metrics_dir(metrics_dir)
    loopback = host in LOCAL_HOSTS
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    readiness = Readiness(workers, f"http://{bind}")
    slots = max(8, 4 * workers)  # a worker's slot is its number modulo this
    in_flight = InFlight(slots)  # shared: made before the fork
    connections = Connections(slots)
    options: dict[str, Any] = {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": serving_worker(connections),
        "limit_request_line": LIMIT_REQUEST_LINE_BYTES,
        "preload_app": False,
        "graceful_timeout": GRACEFUL_TIMEOUT_S,
        "timeout": timeout_s,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "when_ready": readiness.listening,
        "post_fork": _post_fork(spinning, in_flight),
        "child_exit": _child_exit(metrics_dir, in_flight, connections),
        "on_exit": _on_exit(metrics_dir),
    }

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from web.app import create_app
            from web.extensions import WORKERS

            app = create_app(settings, loopback=loopback, in_flight=in_flight)
            app.extensions[WORKERS] = readiness  # /readyz: 503 until the first round loads
            runtime = app.extensions["recsearch"]
            runtime.searcher  # noqa: B018
            # Load the index and the model now, not during the first request; and say so in
            # this worker's /metrics gauges from the start.
            from web.metrics import FACTS

            try:
                FACTS.publish(runtime, force=True)
                runtime.watch.ready()  # items' popularity and deletions, read whole once
            except Exception:  # serve anyway: health, the admin API (a rollback) still work
                log.exception("loading the serving index at worker start failed")
            runtime.share_cores(in_flight.crowded)
            tune_process()
            readiness.loaded(serving(runtime))
            return app

    log.info(
        "serving on %s:%s with %d workers × %d threads, %d encoder threads each "
        "(%d for pools that spin)",
        host,
        port,
        workers,
        threads,
        per_worker,
        spinning,
    )
    Server().run()


class Readiness:
    """The server's ready line, logged once through gunicorn's log by the worker that ends the
    first round of loading: how many workers, how long after gunicorn began listening, what
    they serve. A worker started later (one replacing a worker that died) logs its own line.

    Made in the master before gunicorn forks the workers: they share its counter (shared
    memory) and the monotonic time listening() recorded (gunicorn's when_ready hook).
    """

    def __init__(self, workers: int, url: str) -> None:
        import multiprocessing

        self.workers = workers
        self.url = url
        self.listening_at = time.monotonic()
        self.count = multiprocessing.Value("i", 0)

    def listening(self, server: Any) -> None:
        self.listening_at = time.monotonic()

    def loaded_of(self) -> tuple[int, int]:
        """(workers loaded so far, workers of the first round): /readyz says ready only when
        the first is at least the second. One worker answering while another still loads
        shares the cores with its loading (a full gc, the ONNX session, the items read
        whole): bench/serve_load's first cell, started then, showed p99 in the hundreds of ms.
        """
        return self.count.value, self.workers

    def loaded(self, serving: str) -> None:
        """Called by each worker when it has loaded what it serves."""
        with self.count.get_lock():
            self.count.value += 1
            count = self.count.value
        gunicorn_log = logging.getLogger("gunicorn.error")
        if count == self.workers:
            gunicorn_log.info(
                "recsearch ready on %s: %d worker%s loaded %.1f s after listening; %s",
                self.url,
                self.workers,
                "" if self.workers == 1 else "s",
                time.monotonic() - self.listening_at,
                serving,
            )
        elif count > self.workers:
            gunicorn_log.info(
                "recsearch worker %d ready (it replaces one); %s", os.getpid(), serving
            )


def serving(runtime: Any) -> str:
    """What a worker serves, for the ready line: the index version and the encoder."""
    try:
        version = runtime.live.store.current_version()
    except Exception:  # the line must not stop the worker; /readyz says what is wrong
        version = None
    if version is None:
        return "no index yet: `recsearch ingest FILE` then `recsearch build`"
    settings = runtime.settings
    encoder = settings.encoder
    if settings.query_backend != encoder:
        encoder = f"{encoder} (queries {settings.query_backend})"
    return f"index {version}, encoder {encoder}"


# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.001


def tune_process() -> None:
    """Settings for a serving process, applied once it has loaded what it serves.

    - The GIL switch interval, 5 ms -> 1 ms. A request gives the GIL up around each SQL
      statement and the encoder, and must win it back from the worker's other request
      threads: with the default each such hand-back can wait 5 ms behind a thread in Python
      (the convoy effect). With 1 ms, p99 at 4 connections on SciFact went from 51.5 to 42
      ms and throughput up 6% (bench/serve_load.py, one run, txtai interleaved).
    - gc.freeze(): what a worker loads at start (the index version's fields, the BM25
      vocabulary, tokenizer, model) is some 300,000 objects that live as long as it does,
      and a full collection walked them all: 160 ms on SciFact, while every request in the
      worker waited. Searches allocate objects that survive a collection or two (queued
      impressions, caches), so full collections came every few seconds under load. Frozen,
      they are never walked again; a full collection costs what was allocated since.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()


def _post_fork(threads: int, in_flight: InFlight) -> Any:
    def post_fork(server: Any, worker: Any) -> None:
        in_flight.claim(worker.age)
        # A torch imported before the fork sized its pool for the whole machine; one imported
        # later in the worker reads OMP_NUM_THREADS instead.
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(threads)

    return post_fork


def metrics_root() -> Path:
    """Where servers keep their metrics files: in memory (/dev/shm), never on the data dir's
    disk. prometheus_client memory-maps them, and a worker that grows a mapped file on a
    full filesystem dies by SIGBUS: with them in DATA_DIR, a full data dir killed every
    worker and then gunicorn. Falls back to the temp folder where /dev/shm is missing."""
    shm = Path("/dev/shm")
    base = (
        shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    )
    return base / f"recsearch-metrics-{os.getuid()}"


def fresh_metrics_dir(parent: Path | None = None) -> Path:
    """A new private folder for this server's metrics files: <metrics_root()>/HOST:PID-XXXX.

    Fresh per start, so no count from an earlier run is added in (prometheus_client reads
    every file in the folder). Folders left by servers that died without cleaning up (kill
    -9) are removed: those of this host whose master process is gone (a live server's
    folder stays however old it is).
    """
    parent = parent if parent is not None else metrics_root()
    if not parent.is_dir():
        make_private_dir(parent)
    remove_leftovers(parent.iterdir(), "", older_than_s=math.inf)
    return Path(tempfile.mkdtemp(prefix=f"{processes.current()}-", dir=parent))  # mode 0700


def use_metrics_dir(folder: Path) -> None:
    """Point prometheus_client at `folder`, in this process and the workers it forks.

    prometheus_client picks its value class (memory or mmap files) when it is first imported;
    if something imported it already, it is picked again here, before any worker creates a
    metric (the workers import web.metrics after the fork).
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    if "prometheus_client.values" in sys.modules:
        from prometheus_client import values

        values.ValueClass = values.get_value_class()


def _child_exit(folder: Path, in_flight: InFlight, connections: Connections) -> Any:
    def child_exit(server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        in_flight.clear(worker.age)
        connections.clear(worker.age)
        # The dead worker's "live" gauges (serving version, delta size) go; its counts stay.
        multiprocess.mark_process_dead(worker.pid, str(folder))

    return child_exit


def _on_exit(folder: Path) -> Any:
    def on_exit(server: Any) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    return on_exit
