#!/usr/bin/env bash
# One command from a fresh clone to a passing test suite. Extra arguments go to pytest.
# PostgreSQL tests run when RECSEARCH_TEST_DATABASE_URL is set, e.g.
#   RECSEARCH_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
.venv/bin/python -m pytest "$@"
