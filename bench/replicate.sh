#!/usr/bin/env bash
# Replication benchmark (issue 4): one daemon holds an N-message feed, a
# second one follows it over loopback and replicates it with full
# validation. Prints messages/s for each run and the median.
#   bench/replicate.sh [MESSAGES] [RUNS]   (default 100000, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
RUNS=${2:-3}
# BIN=path/to/scuttlefs compares another build (an A/B run).
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/scuttlefs
fi
KEY=$(head -c 32 /dev/urandom | base64)
WORK=$(mktemp -d)
trap 'pkill -f "$WORK" 2>/dev/null; rm -rf $WORK' EXIT

# The source feed, made once.
seq 1 "$N" | sed 's/^/replicated line /' | $BIN publish --stdin --path $WORK/src --type log --source bench > /dev/null
SRC_ID=$($BIN whoami --path $WORK/src | grep -o '@[^"]*')
SRC_KEY=${SRC_ID#@}; SRC_KEY=${SRC_KEY%.ed25519}
TOTAL=$((N + 1))   # the lines and the machine's name

rates=()
transfers=()
for run in $(seq "$RUNS"); do
  RUST_LOG=warn $BIN serve --no-mount --no-discovery --path $WORK/src --port 9301 --caps.shs "$KEY" &
  SRC_PID=$!
  rm -rf $WORK/dst
  $BIN follow "$SRC_ID" --path $WORK/dst > /dev/null
  sleep 1
  start=$(date +%s.%N)
  RUST_LOG=warn $BIN serve --no-mount --no-discovery --path $WORK/dst --port 9302 --caps.shs "$KEY" \
    --peer "net:127.0.0.1:9301~shs:$SRC_KEY" &
  DST_PID=$!
  first=""
  while true; do
    # awk, not python: a poll must not steal the CPU being measured.
    seq_now=$($BIN status --json --path $WORK/dst 2>/dev/null \
      | awk -v id="\"$SRC_ID\"," '/"feeds":/ {feeds=1} feeds && $1 == "\"id\":" && $2 == id {hit=1} hit && $1 == "\"seq\":" {gsub(",", "", $2); print $2; exit}' || true)
    seq_now=${seq_now:-0}
    [ -z "$first" ] && [ "$seq_now" -gt 0 ] && { first=$(date +%s.%N); first_seq=$seq_now; }
    [ "$seq_now" -ge "$TOTAL" ] && break
    sleep 0.1
  done
  end=$(date +%s.%N)
  rate=$(echo "$TOTAL / ($end - $start)" | bc)
  transfer=$(echo "($TOTAL - $first_seq) / ($end - $first)" | bc)
  echo "run $run: $TOTAL messages in $(echo "$end - $start" | bc | cut -c1-5)s = $rate msg/s from daemon start; $transfer msg/s from the first message stored"
  rates+=("$rate")
  transfers+=("$transfer")
  kill -TERM $SRC_PID $DST_PID; wait $SRC_PID $DST_PID 2>/dev/null || true
done
printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print "median from daemon start: " a[int((NR+1)/2)] " msg/s"}'
printf '%s\n' "${transfers[@]}" | sort -n | awk '{a[NR]=$1} END {print "median transfer (first to last message): " a[int((NR+1)/2)] " msg/s"}'
