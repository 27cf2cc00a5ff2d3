#!/usr/bin/env bash
# Create .venv in the checkout and install recsearch into it. Quick when nothing changed.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "recsearch needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  "$python" -m venv .venv
fi

# Reinstall only when pyproject.toml or the extras changed since the last install.
want="$(sha256sum pyproject.toml | cut -c1-16) ${extras}"
stamp=.venv/.recsearch-installed
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing recsearch${extras:+[$extras]} into .venv (first time: a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  # torch first and pinned: 2.13.0 is the CPU wheel; any other spec pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}" 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import torch, faiss, sentence_transformers, engine, indexer, web' \
    || { echo "install failed; see the pip output above" >&2; exit 1; }
  if [ -z "$extras" ]; then
    # The serving install also makes the encoder's ONNX export, once per model and library
    # versions, into the per-user cache (RECSEARCH_CACHE_DIR, default ~/.cache/recsearch) that
    # every data dir shares; where this fails, the first build makes it.
    echo "preparing the encoder (the model exported to ONNX once for this machine)" >&2
    .venv/bin/python -c '
from engine.core.config import Settings
from engine.encoder.prepare import prepare_exports
prepare_exports(Settings.from_env())
' || echo "could not prepare the encoder now; the first build will" >&2
  fi
  echo "$want" >"$stamp"
fi
