#!/usr/bin/env bash
# The alert engine's idle CPU (issue 21): a daemon that holds 1,000 jobs
# (a tenth of them failed, a fifth on cron schedules in a zone), with an
# alert target, judging them once a second and sending nothing, because
# nothing changes. Beside it, in the same run, the same daemon holding no
# jobs. Each is measured over WINDOW seconds from /proc/PID/stat
# (utime + stime), after the daemon settled, ROUNDS times; prints the
# median share of one core.
#   bench/alert-idle.sh [JOBS] [ROUNDS] [WINDOW]   (default 1000 5 20)
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${1:-1000}
ROUNDS=${2:-5}
WINDOW=${3:-20}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/scuttlefs
fi
WORK=$(mktemp -d)
trap 'pkill -f "$WORK" 2>/dev/null; sleep 0.5; rm -rf $WORK; true' EXIT
TICKS=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Starts a headless daemon on DIR, fills it with N jobs, waits until the
# alert thread has judged them, then prints its CPU share per window.
measure() {
  local dir=$1 jobs=$2 port=$3
  $BIN alert add "exec:/bin/true" --path "$dir" > /dev/null
  RUST_LOG=warn $BIN serve --path "$dir" --no-mount --no-discovery --port "$port" &
  local pid=$!
  until [ -S "$dir/scuttlefs.sock" ] && $BIN status --path "$dir" > /dev/null 2>&1; do sleep 0.1; done
  for i in $(seq "$jobs"); do
    if [ $((i % 5)) -eq 0 ]; then
      schedule=(--cron "0 2 * * *" --tz Europe/Berlin)
    else
      schedule=(--every 1d)
    fi
    if [ $((i % 10)) -eq 0 ]; then cmd=false; else cmd=true; fi
    $BIN run --path "$dir" --source "job-$i" "${schedule[@]}" --quiet -- $cmd || true
  done
  # Judged: health lists them all.
  until [ "$($BIN health --json --path "$dir" | grep -o '"job-[0-9]*"' | sort -u | wc -l)" -ge "$jobs" ]; do
    sleep 0.5
  done
  sleep 3
  local shares=()
  for r in $(seq "$ROUNDS"); do
    local t0 c0 t1 c1
    t0=$(date +%s.%N); c0=$(cpu_ticks $pid)
    sleep "$WINDOW"
    t1=$(date +%s.%N); c1=$(cpu_ticks $pid)
    shares+=("$(echo "scale=3; 100 * ($c1 - $c0) / $TICKS / ($t1 - $t0)" | bc)")
  done
  kill $pid; wait $pid 2>/dev/null || true
  printf '%s\n' "${shares[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

with=$(measure "$WORK/busy" "$JOBS" 9321)
without=$(measure "$WORK/empty" 0 9322)
echo "idle CPU with $JOBS jobs: $with % of a core (median of $ROUNDS × ${WINDOW}s)"
echo "idle CPU with 0 jobs:     $without % of a core (same run)"
