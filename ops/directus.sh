#!/usr/bin/env bash
# Directus for development and the end-to-end tests (tests/e2e), from the npm registry.
#
#   ops/directus.sh install    install Directus once into a cache dir outside the checkout
#                              (idempotent: reused when present); prints that dir
#   ops/directus.sh path       print the cache dir if Directus is installed there, else fail
#   ops/directus.sh cli ARGS   run the cached Directus CLI (bootstrap, start, schema ...)
#
# The cache dir is ${PROCESSOR_DIRECTUS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/processor/
# directus-$DIRECTUS_VERSION}. An install
# takes several minutes (about 1,100 packages), hence the cache: CI runs `install` before
# the tests so that the tests find it ready.
#
# DIRECTUS_VERSION is pinned: 11.3.5 is the newest Directus 11 that runs on Node 20
# (11.4 and later need Node 22), and schema/directus/snapshot.yaml was taken from it.
#
# Exit codes: 0 ok, 2 usage, 3 node/npm missing, 4 the npm install failed (registry
# unreachable, ...). The tests skip, with this script's message, on 3 and 4.
set -euo pipefail

DIRECTUS_VERSION="${DIRECTUS_VERSION:-11.3.5}"
CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/processor"
DIR="${PROCESSOR_DIRECTUS_DIR:-$CACHE_ROOT/directus-$DIRECTUS_VERSION}"
MARKER="$DIR/.installed"

say() { echo "directus.sh: $*" >&2; }

installed() { [ -f "$MARKER" ] && [ -x "$DIR/node_modules/.bin/directus" ]; }

install() {
  if installed; then
    echo "$DIR"
    return 0
  fi
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "node and npm are needed to install Directus (not found)"
    return 3
  fi
  mkdir -p "$(dirname "$DIR")"
  # One installer at a time (CI's pre-install and a test run may race); the loser waits
  # and then finds the cache ready.
  exec 9>"$DIR.lock"
  flock 9
  if installed; then
    echo "$DIR"
    return 0
  fi
  local tmp="$DIR.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  printf '{"name":"processor-directus","private":true}\n' >"$tmp/package.json"
  say "installing directus@$DIRECTUS_VERSION into $DIR (takes several minutes)"
  local started
  started=$(date +%s)
  if ! (cd "$tmp" && npm install --no-audit --no-fund --omit=dev --loglevel=error \
    --fetch-timeout=60000 --fetch-retries=1 "directus@$DIRECTUS_VERSION" >&2); then
    rm -rf "$tmp"
    say "npm install directus@$DIRECTUS_VERSION failed (is the npm registry reachable?)"
    return 4
  fi
  rm -rf "$DIR"
  mv "$tmp" "$DIR"
  echo "directus@$DIRECTUS_VERSION installed in $(($(date +%s) - started)) s" >"$MARKER"
  say "installed in $(($(date +%s) - started)) s"
  echo "$DIR"
}

case "${1:-}" in
  install)
    install
    ;;
  path)
    if installed; then
      echo "$DIR"
    else
      say "directus@$DIRECTUS_VERSION is not installed in $DIR (run: ops/directus.sh install)"
      exit 1
    fi
    ;;
  cli)
    shift
    installed || install >/dev/null
    # Not node_modules/.bin/directus: that wrapper asks the npm registry for a newer
    # release at every start. This is what it runs after the check.
    exec node "$DIR/node_modules/@directus/api/dist/cli/run.js" "$@"
    ;;
  *)
    echo "usage: ops/directus.sh install | path | cli ARGS..." >&2
    exit 2
    ;;
esac
