#!/usr/bin/env bash
# One command from a fresh clone to a server you can query: install, ingest the sample
# catalog, build the index (skipped when nothing changed), serve on 127.0.0.1:8000.
# HOST and PORT move the server; RECSEARCH_* variables apply to every step (README).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf '\n[quickstart %3ds] %s\n' "$((SECONDS - started))" "$*" >&2; }

step "installing recsearch into .venv (quick when nothing changed)"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
host="${HOST:-127.0.0.1}"
port="${PORT:-8000}"
data_dir="${RECSEARCH_DATA_DIR:-var}"

step "ingesting the sample catalog (data/catalog.jsonl: 325 destinations) into $data_dir"
recsearch ingest data/catalog.jsonl
step "building the search index (skipped when the catalog has not changed)"
recsearch build --if-stale
step "loading 20 sample users' histories (data/events.jsonl; reloading them changes nothing)"
recsearch events data/events.jsonl
key="$(recsearch key)"

cat <<MSG

recsearch is starting on http://$host:$port ("recsearch ready on ..." below says when it answers)
API key (writes, user profiles; also search and events unless served on 127.0.0.1):
  $key        (kept in $data_dir/api_key; \`.venv/bin/recsearch key\` prints it again)
Admin page: http://$host:$port/admin/  (sign in with the key)
Try, from another terminal:
  curl 'http://$host:$port/v1/search?q=quiet+beach+with+snorkeling&k=5'
  curl 'http://$host:$port/v1/search?q=museums+and+cafes&category=city&k=3'
  curl -X POST http://$host:$port/v1/search -H 'Content-Type: application/json' \\
       -d '{"q": "skiing in the alps", "k": 5}'
  curl 'http://$host:$port/v1/search?user_id=beach-lover-1&k=5'           # "for you"
  curl -G 'http://$host:$port/v1/search' --data-urlencode 'q=temples and gardens' \\
       --data-urlencode 'filters={"country": "Japan"}' --data-urlencode 'k=3'
  curl 'http://$host:$port/v1/items/kyoto-japan/similar?k=5'              # similar items
  curl 'http://$host:$port/v1/search?q=city+break&user_id=mountain-hiker-1&explain=true&k=3'
  curl -X POST http://$host:$port/v1/events -H 'Content-Type: application/json' \\
       -d '{"user_id": "me", "item_id": "kyoto-japan", "type": "click"}'
  curl -H "Authorization: Bearer $key" http://$host:$port/v1/users/me
  .venv/bin/recsearch search "trekking in the himalayas" --user backpacker-1 --explain
Your own catalog: JSON Lines or CSV, an item a line with "id" and "title" (and "text",
"category", "tags", "attributes": README "Catalog format"). Into this server, from another
terminal (it serves the new index version within a second, no restart):
  .venv/bin/recsearch ingest my-catalog.jsonl && .venv/bin/recsearch build
Or alone, in a data dir of its own:
  export RECSEARCH_DATA_DIR=var-mine
  .venv/bin/recsearch ingest my-catalog.jsonl && .venv/bin/recsearch build
  .venv/bin/recsearch serve --port 8001
Ctrl-C stops the server.

MSG
step "serving (recsearch serve --host $host --port $port)"
exec recsearch serve --host "$host" --port "$port"
