#!/usr/bin/env bash
# publish --stdin benchmark (issue 6):
#   seq N | scuttlefs publish --stdin --type log --source bench   (median of 3)
# beside the seed's own pipeline over ssb-server, one sbot process a line:
#   seq 200 | xargs -I {} sbot publish --path … --port … --caps.shs … --type log --source bench --text " {}"
# (plus --host 127.0.0.1, so that the client stays on loopback).
#   bench/stdin.sh [N] [SEED_LINES]   (default 100000, 200)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
SEED_LINES=${2:-200}
cargo build --release --quiet
(cd tests/js && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error)
BIN=$PWD/target/release/scuttlefs
SBOT="node $PWD/tests/js/node_modules/ssb-server/bin.js"
KEY=$(head -c 32 /dev/urandom | base64)
WORK=$(mktemp -d)
trap 'pkill -f "$WORK" 2>/dev/null; sleep 1; rm -rf $WORK' EXIT
now() { date +%s.%N; }

rates=()
for run in 1 2 3; do
  rm -rf $WORK/node
  t0=$(now)
  seq 1 $N | $BIN publish --stdin --path $WORK/node --type log --source bench > /dev/null
  t1=$(now)
  rate=$(echo "$N / ($t1 - $t0)" | bc)
  echo "scuttlefs publish --stdin run $run: $N lines in $(echo "$t1 - $t0" | bc | cut -c1-5)s = $rate lines/s"
  rates+=("$rate")
done
printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print "scuttlefs median: " a[int((NR+1)/2)] " lines/s"}'

(cd tests/js && $SBOT start --path $WORK/ssb --port 9601 --ws.port 9602 --caps.shs "$KEY" --host 127.0.0.1 --no-gossip.local > $WORK/ssb.log 2>&1 &)
for _ in $(seq 300); do [ -f $WORK/ssb/manifest.json ] && break; sleep 0.2; done
sleep 2
t0=$(now)
seq 1 $SEED_LINES | xargs -I {} $SBOT publish --host 127.0.0.1 --path $WORK/ssb --port 9601 --caps.shs "$KEY" --type log --source bench --text " {}" > /dev/null
t1=$(now)
rate=$(echo "$SEED_LINES / ($t1 - $t0)" | bc -l | cut -c1-6)
echo "seed pipeline (xargs + sbot publish, one process a line): $SEED_LINES lines in $(echo "$t1 - $t0" | bc | cut -c1-6)s = $rate lines/s"
echo "  scaled to $N lines: $(echo "$N / $rate" | bc) s"
