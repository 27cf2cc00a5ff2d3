#!/usr/bin/env bash
# One command from a fresh clone to a server you can query: install, ingest the sample
# catalog, build the index (skipped when nothing changed), serve on 127.0.0.1:8000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
host="${HOST:-127.0.0.1}"
port="${PORT:-8000}"

recsearch ingest data/catalog.jsonl
recsearch build --if-stale
recsearch events data/events.jsonl   # sample users' histories; event_ids make reloads no-ops
key="$(recsearch key)"

cat <<MSG

recsearch is starting on http://$host:$port
API key (writes, user profiles; also search and events unless served on 127.0.0.1):
  $key        (kept in var/api_key; \`.venv/bin/recsearch key\` prints it again)
Admin page: http://$host:$port/admin/  (sign in with the key)
Try, from another terminal:
  curl 'http://$host:$port/v1/search?q=quiet+beach+with+snorkeling&k=5'
  curl 'http://$host:$port/v1/search?q=museums+and+cafes&category=city&k=3'
  curl -X POST http://$host:$port/v1/search -H 'Content-Type: application/json' \\
       -d '{"q": "skiing in the alps", "k": 5}'
  curl 'http://$host:$port/v1/search?user_id=beach-lover-1&k=5'           # "for you"
  curl -G 'http://$host:$port/v1/search' --data-urlencode 'q=temples and gardens' \
       --data-urlencode 'filters={"country": "Japan"}' --data-urlencode 'k=3'
  curl 'http://$host:$port/v1/items/kyoto-japan/similar?k=5'              # similar items
  curl 'http://$host:$port/v1/search?q=city+break&user_id=mountain-hiker-1&explain=true&k=3'
  curl -X POST http://$host:$port/v1/events -H 'Content-Type: application/json' \
       -d '{"user_id": "me", "item_id": "kyoto-japan", "type": "click"}'
  curl -H "Authorization: Bearer $key" http://$host:$port/v1/users/me
  .venv/bin/recsearch search "trekking in the himalayas" --user backpacker-1 --explain

MSG
exec recsearch serve --host "$host" --port "$port"
