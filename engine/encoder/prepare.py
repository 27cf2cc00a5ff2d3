"""The ONNX exports a server will load, made before it starts, in a process of their own.

An export (engine.encoder.onnx_cache) loads torch and the sentence-transformers model to trace
and check the graph: about half a minute, once per model and library versions. Made inside a
serving process, that process keeps torch for its life. With RECSEARCH_QUERY_ENCODER=onnx-int8
on a machine without that export yet, each gunicorn worker grew from about 0.3 GB to 1 GB
(bench/serve_load.py's RSS column) and the first worker answered half a minute after the
server listened. `recsearch serve` calls prepare_exports first: what is missing is exported by
a child process (`python -m engine.encoder.prepare`, the settings on its standard input), which
exits with torch; the workers then only read the cache. scripts/setup.sh runs the same child at
install time.
"""

from __future__ import annotations

import logging
import subprocess
import sys

from engine.core.config import Settings
from engine.core.errors import ConfigError
from engine.encoder.onnx_cache import FILES, cache_problem, export_dir, model_digest
from engine.encoder.onnx_encoder import model_folder

log = logging.getLogger(__name__)


def backends(settings: Settings) -> list[str]:
    """The ONNX backends a server with these settings loads: its queries' and its batches'."""
    return [b for b in dict.fromkeys([settings.query_backend, settings.encoder]) if b in FILES]


def missing_exports(settings: Settings) -> list[str]:
    """Those of backends(settings) with no usable export in the cache (the user's, or the data
    dir's where a start falls back to it); the files are read, as a start reads them."""
    wanted = backends(settings)
    if not wanted:
        return []
    digest = model_digest(settings, model_folder(settings))
    caches = {export_dir(s, digest) for s in (settings, settings.replace(cache_dir=None))}
    return [
        b for b in wanted if all(cache_problem(c / FILES[b], digest) is not None for c in caches)
    ]


def prepare_exports(settings: Settings) -> list[str]:
    """Export what missing_exports finds, in a child process (its progress lines on stderr);
    returns the backends it exported. Raises ConfigError when the child fails, with its exit
    status: the reason is the child's last line, above."""
    missing = missing_exports(settings)
    if missing:
        done = subprocess.run(
            [sys.executable, "-m", "engine.encoder.prepare", *missing],
            input=settings.model_dump_json(),
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ConfigError(
                f"preparing the {', '.join(missing)} encoder failed (exit {done.returncode}); "
                "the reason is above"
            )
    return missing


def main(argv: list[str]) -> int:
    """The child: load (so export and check) each backend named, for the settings read as JSON
    from standard input."""
    from engine.encoder.onnx_cache import load_onnx_encoder

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    settings = Settings.model_validate_json(sys.stdin.read())
    for backend in argv:
        try:
            load_onnx_encoder(settings, backend)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
