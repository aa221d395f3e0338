#!/usr/bin/env bash
# Instructions per record of the pipeline's own work (bench.record_path) under callgrind.
#
#   bench/instructions.sh            # the writer with the IO mapping (the default)
#   bench/instructions.sh off        # without it: on - off is what `derived` costs
#
# Timed runs move +/-10 % on a shared machine; this count repeats within ~10 instructions
# per record whatever else the machine does, so a 1-2 % change can be compared. Two
# commits: run it in two checkouts (`git worktree add /tmp/base <commit>`, with a link to
# this venv) and compare. Start-up is taken out: (repeat 3 - repeat 1) / 2 / records.
# PYTHONHASHSEED and OPENBLAS_NUM_THREADS fixed: hash layout and numpy's BLAS thread
# (shapely imports numpy) otherwise move the count by ~1.5 %.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-on}
records=${RECORDS:-5000}
case "$mode" in
  on) flags=() ;;
  off) flags=(--no-enricher) ;;
  *) echo "usage: $0 [on|off]" >&2; exit 2 ;;
esac
command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
count() {
  OPENBLAS_NUM_THREADS=1 PYTHONHASHSEED=0 valgrind --tool=callgrind \
    --callgrind-out-file="$out/cg.$1" .venv/bin/python -m bench.record_path \
    --records "$records" --repeat "$1" "${flags[@]}" >"$out/log.$1" 2>&1 ||
    { cat "$out/log.$1" >&2; exit 1; }
  awk '/^(summary|totals):/ { print $2; exit }' "$out/cg.$1"
}
one=$(count 1)
three=$(count 3)
echo "bench.record_path, IO mapping $mode, $records records: $(((three - one) / 2 / records)) instructions per record"
