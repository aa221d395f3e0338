#!/usr/bin/env bash
# Set everything up and run a simulated rally feed through the real pipeline:
# processor run <- Redis stream <- processor simulate, into PostgreSQL `positions`.
# Uses its own stream key so it never mixes with another feed; leaves the rows in the
# `processor` database for you to look at. Counts are this run's only (rows and
# crossings since it started, dead letters it added), so a rerun reads the same, and
# it exits 1 if what landed is not what was published.
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/setup.sh

export REDIS_TELEMETRY_STREAM=${REDIS_TELEMETRY_STREAM:-demo:telemetry}
export POSTGRES_URL=${POSTGRES_URL:-postgresql://127.0.0.1:5432/processor}
export HTTP_PORT=${HTTP_PORT:-8080}
export WS_PORT=${WS_PORT:-8081}
export HTTP_HOST=127.0.0.1 WS_HOST=127.0.0.1
DEVICES=${DEVICES:-40}
COUNT=${COUNT:-6000}
LOG=$(mktemp -t processor-demo-XXXX.log)
P=.venv/bin/processor
PY=.venv/bin/python

# One field of `processor status --json` (the configured group's, and the DLQ's).
status_field() {
  $P status --json | $PY -c 'import json, sys
d = json.load(sys.stdin)
g = d["group"]
print({"backlog": g["pending"] + (g["lag"] or 0) if g["exists"] else -1,
       "dlq": d["dlq"]["length"]}[sys.argv[1]])' "$1"
}
sql() { psql -X -At "$POSTGRES_URL" -c "$1"; }

since=$(sql "SELECT now()")
dlq_before=$(status_field dlq)

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
SUMMARY=$(mktemp -t processor-demo-summary-XXXX.json)
out=$($P simulate --devices "$DEVICES" --count "$COUNT" --rate 2000 --poison-ratio 0.01 \
  --seed 7 --create-race --json)
printf '%s\n' "$out" | grep -v '^{' || true   # the race it created
printf '%s\n' "$out" | grep '^{' >"$SUMMARY"  # the --json summary, shown as text:
$PY - "$SUMMARY" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
kinds = ", ".join(f"{k} {v}" for k, v in d["poison_variants"].items())
print(f"published {d['published']} records to {d['stream']} in {d['elapsed_s']} s"
      f" ({d['rate_per_s']}/s)\n  valid {d['valid']} (late {d['late']}, no fix {d['no_fix']}),"
      f" poison {d['poison']} ({kinds})\n  devices {d['devices']}, seed {d['seed']}")
EOF
summary() { $PY -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$SUMMARY" "$1"; }

echo "demo: waiting until every entry is committed and acked"
settled=no
for _ in $(seq 1 300); do
  [ "$(status_field backlog)" = "0" ] && { settled=yes; break; }
  sleep 0.2
done
[ $settled = yes ] || echo "demo: still pending or lagging after a minute (see $LOG)"
# Timing is written just after the rows it comes from: wait until the count holds still.
crossings=-1
for _ in $(seq 1 20); do
  now=$(sql "SELECT count(*) FROM timing_records WHERE created_at >= '$since'")
  [ "$now" = "$crossings" ] && break
  crossings=$now
  sleep 0.5
done

echo; echo "== processor status"; $P status
echo; echo "== rows in positions and timing crossings, this run"
psql -X "$POSTGRES_URL" -c \
  "SELECT count(*) AS rows, count(DISTINCT device_id) AS devices,
          count(*) FILTER (WHERE NOT fix_valid) AS no_fix_rows,
          max(ingested_at) - min(ingested_at) AS ingest_span
     FROM positions WHERE ingested_at >= '$since'"
psql -X "$POSTGRES_URL" -c \
  "SELECT kind, count(*) AS crossings FROM timing_records
     WHERE created_at >= '$since' GROUP BY kind ORDER BY kind"
$P dlq list --limit 5
# Group lag and pending are gauges sampled every LAG_SAMPLE_INTERVAL_S (5 s): wait for
# the sample that follows the settled backlog, so the excerpt shows what status showed.
metric() { curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" | grep -E "^processor_group_$1_entries\{" | awk '{print $2}'; }
for _ in $(seq 1 60); do
  [ "$(metric pending)" = "0.0" ] && [ "$(metric lag)" = "0.0" ] && break
  sleep 0.25
done
echo; echo "== /metrics (excerpt)"
curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" | grep -E '^processor_(rows_total|records_consumed_total|dead_lettered_total|group_lag|group_pending|device_states)' || true

rows=$(sql "SELECT count(*) FROM positions WHERE ingested_at >= '$since'")
dead=$(($(status_field dlq) - dlq_before))
valid=$(summary valid)
poison=$(summary poison)
echo
if [ "$rows" = "$valid" ] && [ "$dead" = "$poison" ] && [ "$crossings" -gt 0 ]; then
  verdict=0
  echo "demo: OK: $rows rows = valid records published, $dead dead letters = poison published, $crossings timing crossings"
else
  verdict=1
  echo "demo: MISMATCH: rows $rows (valid published $valid), dead letters $dead (poison published $poison), crossings $crossings"
fi

echo "demo: stopping the processor (SIGTERM)"
kill -TERM $PID
set +e; wait $PID; code=$?; set -e
trap - EXIT
echo "demo: processor exited with $code"; tail -n 3 "$LOG"
rm -f "$SUMMARY"
[ $code = 0 ] || exit $code
exit $verdict
