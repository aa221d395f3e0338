#!/usr/bin/env bash
# Set everything up and run a simulated rally feed through the real pipeline:
# processor run <- Redis stream <- processor simulate, into PostgreSQL `positions`.
# Uses its own stream key so it never mixes with another feed; leaves the rows in the
# `processor` database for you to look at.
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/setup.sh

export REDIS_TELEMETRY_STREAM=${REDIS_TELEMETRY_STREAM:-demo:telemetry}
export HTTP_PORT=${HTTP_PORT:-8080}
export WS_PORT=${WS_PORT:-8081}
export HTTP_HOST=127.0.0.1 WS_HOST=127.0.0.1
DEVICES=${DEVICES:-40}
COUNT=${COUNT:-6000}
LOG=$(mktemp -t processor-demo-XXXX.log)
P=.venv/bin/processor

echo "demo: starting processor run (stream $REDIS_TELEMETRY_STREAM, logs in $LOG)"
$P run >"$LOG" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
  kill -0 $PID 2>/dev/null || { echo "demo: processor exited early:"; cat "$LOG"; exit 1; }
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz"; echo

echo "demo: creating the matching race, publishing $COUNT simulated records from $DEVICES devices (1% poison, late uploads)"
$P simulate --devices "$DEVICES" --count "$COUNT" --rate 2000 --poison-ratio 0.01 --seed 7 --create-race

echo "demo: waiting until every entry is committed and acked"
for _ in $(seq 1 300); do
  pending=$($P status --json | .venv/bin/python -c \
    'import json,sys; d=json.load(sys.stdin); g=[g for g in d["groups"] if g["name"]=="processor"]; print((g[0]["pending"] + (g[0]["lag"] or 0)) if g else -1)')
  [ "$pending" = "0" ] && break
  sleep 0.2
done

echo; echo "== processor status"; $P status
echo; echo "== rows in positions (this stream's devices) and dead letters"
psql -X postgresql://127.0.0.1:5432/processor -c \
  "SELECT count(*) AS rows, count(DISTINCT device_id) AS devices,
          count(*) FILTER (WHERE NOT fix_valid) AS no_fix_rows,
          max(ingested_at) - min(ingested_at) AS ingest_span
     FROM positions WHERE ingested_at > now() - interval '10 minutes'"
psql -X postgresql://127.0.0.1:5432/processor -c \
  "SELECT kind, count(*) AS crossings FROM timing_records
     WHERE created_at > now() - interval '10 minutes' GROUP BY kind ORDER BY kind"
$P dlq list --limit 5
echo; echo "== /metrics (excerpt)"
curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" | grep -E '^processor_(rows_total|records_consumed_total|dead_lettered_total|group_lag|group_pending|device_states)' || true

echo; echo "demo: stopping the processor (SIGTERM)"
kill -TERM $PID
set +e; wait $PID; code=$?; set -e
trap - EXIT
echo "demo: processor exited with $code"; tail -n 3 "$LOG"
exit $code
