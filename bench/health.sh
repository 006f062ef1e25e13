#!/usr/bin/env bash
# Health benchmark (issue 13):
#  1. `scuttlefs health` with JOBS jobs over LINES lines (the jobs' lines
#     written through the mount as JSON lines), median of RUNS answers;
#     `scuttlefs status` beside it as the reference of a round trip;
#  2. `scuttlefs run` publishing a command's RUN_LINES output lines, through
#     the daemon and without one, beside `publish --stdin` of the same lines.
#   bench/health.sh [LINES] [JOBS] [RUN_LINES] [RUNS]   (default 1000000 1000 100000 5)
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-1000000}
JOBS=${2:-1000}
RUN_LINES=${3:-100000}
RUNS=${4:-5}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/scuttlefs
fi
WORK=$(mktemp -d)
trap 'pkill -f "$WORK" 2>/dev/null; sleep 0.5; fusermount3 -uz $WORK/mount 2>/dev/null; umount -l $WORK/mount 2>/dev/null; rm -rf $WORK' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms_since() { echo "($(date +%s%N) - $1) / 1000000" | bc; }

RUST_LOG=warn $BIN serve --path $WORK/node --mount $WORK/mount --no-discovery --port 0 > $WORK/log 2>&1 &
for _ in $(seq 100); do [ -e $WORK/mount/whoami ] && break; sleep 0.1; done

# LINES lines in JOBS jobs: each job a run of lines ending in a run=end line.
per_job=$((LINES / JOBS))
awk -v jobs=$JOBS -v per=$per_job 'BEGIN {
  for (j = 0; j < jobs; j++) {
    for (i = 1; i < per; i++) printf "{\"type\":\"log\",\"source\":\"job%d\",\"text\":\"line %d of job %d\"}\n", j, i, j;
    printf "{\"type\":\"log\",\"source\":\"job%d\",\"every\":\"1d\",\"run\":\"end\",\"exit\":%d,\"took\":\"3s\",\"text\":\"done\"}\n", j, (j % 10 == 0);
  }
}' > $WORK/lines.jsonl
start=$(date +%s%N)
cat $WORK/lines.jsonl > $WORK/mount/publish
echo "wrote $(wc -l < $WORK/lines.jsonl) lines in $(ms_since $start) ms"

health=(); status=()
for _ in $(seq "$RUNS"); do
  start=$(date +%s%N); $BIN health --path $WORK/node > $WORK/health.txt || true; health+=("$(ms_since $start)")
  start=$(date +%s%N); $BIN status --path $WORK/node > /dev/null; status+=("$(ms_since $start)")
done
echo "health rows: $(($(wc -l < $WORK/health.txt) - 1)) ($(grep -c '^failed' $WORK/health.txt) failed)"
echo "health answers (ms): ${health[*]}"
echo "status answers (ms): ${status[*]}"
echo "median health: $(printf '%s\n' "${health[@]}" | median) ms; median status: $(printf '%s\n' "${status[@]}" | median) ms"
start=$(date +%s%N); cat $WORK/mount/health > /dev/null; echo "cat mount/health: $(ms_since $start) ms"

# scuttlefs run through the daemon, beside publish --stdin.
through=(); stdin=()
for _ in $(seq "$RUNS"); do
  start=$(date +%s%N)
  $BIN run --path $WORK/node --source runbench --quiet -- seq "$RUN_LINES"
  through+=("$(echo "$RUN_LINES * 1000 / $(ms_since $start)" | bc)")
  start=$(date +%s%N)
  seq "$RUN_LINES" | $BIN publish --stdin --path $WORK/node --type log --source stdinbench > /dev/null
  stdin+=("$(echo "$RUN_LINES * 1000 / $(ms_since $start)" | bc)")
done
echo "run through the daemon (lines/s): ${through[*]}"
echo "publish --stdin (lines/s):        ${stdin[*]}"
echo "median run: $(printf '%s\n' "${through[@]}" | median) lines/s; median publish --stdin: $(printf '%s\n' "${stdin[@]}" | median) lines/s"
pkill -f "serve --path $WORK/node"
for _ in $(seq 100); do pgrep -f "serve --path $WORK/node" > /dev/null || break; sleep 0.1; done

# And with no daemon: the run holds the store itself.
local_runs=()
for _ in $(seq "$RUNS"); do
  start=$(date +%s%N)
  $BIN run --path $WORK/node --source runlocal --quiet -- seq "$RUN_LINES"
  local_runs+=("$(echo "$RUN_LINES * 1000 / $(ms_since $start)" | bc)")
done
echo "run without a daemon (lines/s): ${local_runs[*]}"
echo "median run without a daemon: $(printf '%s\n' "${local_runs[@]}" | median) lines/s"
