#!/usr/bin/env bash
# Set up a development machine from a fresh checkout: Python venv with the project and its
# dev tools, Redis and PostgreSQL running, and the `processor` database migrated.
# Idempotent: safe to run again. Used by ops/demo.sh, ops/test.sh and .ci/run.
#
# Dependencies are installed from the hash-checked lock, so every machine and CI get the
# exact versions. Updating dependencies: edit pyproject.toml, then regenerate both locks
#   .venv/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes -o requirements.lock
#   .venv/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 --generate-hashes -o requirements-dev.lock
# (add --upgrade to move to newer releases), run this script, commit all three files.
# The Dockerfile builds the wheel with the build backend locked in ops/build.lock; after a
# change to [build-system] requires in pyproject.toml:
#   .venv/bin/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml","rb"))["build-system"]["requires"], sep="\n")' \
#     | .venv/bin/uv pip compile - --universal --python-version 3.11 --generate-hashes -o ops/build.lock
# The image's mypyc build takes mypy (the dev lock's version) and setuptools from
# ops/native.lock; after mypy moves in requirements-dev.lock:
#   printf 'mypy==%s\nsetuptools\n' "$(sed -n 's/^mypy==\([^ ]*\).*/\1/p' requirements-dev.lock)" \
#     | .venv/bin/uv pip compile - --universal --python-version 3.11 --generate-hashes -o ops/native.lock
# tests/ops/test_lock.py fails while a lock lags behind pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true

# pip, quietly, but with all of its output if it fails.
pip_install() {
  local out
  if ! out=$(.venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1); then
    echo "$out" >&2
    echo "setup: pip install $* failed" >&2
    exit 1
  fi
  printf "%s" "$out" | grep -v "^WARNING: Location" || true
}
echo "setup: installing locked dependencies (requirements-dev.lock) and processor"
pip_install --require-hashes -r requirements-dev.lock
pip_install --no-deps -e .
# The hot-path modules compiled with mypyc (processor/native.py): ~18 % fewer instructions
# per record. Without a C compiler the sources run as they are, so this only warns.
.venv/bin/python ops/compile_native.py ||
  echo "setup: compiling the hot path failed; the processor runs from source (slower)" >&2
.venv/bin/python -c "import processor" # fail here, loudly, if the install did not work
if ! .venv/bin/python -m pip check >/dev/null 2>&1; then
  .venv/bin/python -m pip check >&2 || true
  echo "setup: a dependency is missing: is requirements-dev.lock older than pyproject.toml?" \
    "(see the top of ops/setup.sh)" >&2
  exit 1
fi

# promtool, for the checks of ops/prometheus/ in tests/ops: taken from Debian's
# prometheus package without installing the package (that would also install and start a
# Prometheus server). Best effort: without it those checks are skipped, saying why.
if ! command -v promtool >/dev/null 2>&1 && [ ! -x .venv/bin/promtool ] \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: fetching promtool (Debian package prometheus)"
  tmp=$(mktemp -d)
  if (cd "$tmp" && { apt-get download -qq prometheus >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get download -qq prometheus >/dev/null 2>&1; }; } \
    && dpkg-deb -x prometheus_*.deb root) && [ -x "$tmp/root/usr/bin/promtool" ]; then
    cp "$tmp/root/usr/bin/promtool" .venv/bin/promtool
  else
    echo "setup: promtool unavailable; the promtool checks in tests/ops will be skipped" >&2
  fi
  rm -rf "$tmp"
fi

# Redis 7 and PostgreSQL 15 run on every machine of this kind; start them if they stopped,
# with the commands the machine's documentation gives.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "setup: starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "setup: starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
for _ in $(seq 1 50); do
  redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -q && break
  sleep 0.2
done
redis-cli -h 127.0.0.1 ping >/dev/null
pg_isready -h 127.0.0.1

# The database of the default POSTGRES_URL, for the demo and local runs.
DB_ADMIN=${DB_ADMIN:-postgresql://postgres@127.0.0.1:5432/postgres}
if ! psql "$DB_ADMIN" -Atc "SELECT 1 FROM pg_database WHERE datname = 'processor'" | grep -q 1; then
  psql "$DB_ADMIN" -qc "CREATE DATABASE processor"
fi
.venv/bin/processor migrate >/dev/null
echo "setup: ready (redis 127.0.0.1:6379, postgresql 127.0.0.1:5432/processor)"
