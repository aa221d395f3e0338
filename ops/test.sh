#!/usr/bin/env bash
# Run the whole test suite against the real Redis and PostgreSQL (each run uses a fresh
# database and fresh stream keys, so it never touches the demo's data).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pytest ] || ./ops/setup.sh
exec .venv/bin/python -m pytest "$@"
