#!/usr/bin/env bash
# Interop benchmark (issue 5): N messages ssb-server → scuttlefs,
# scuttlefs → ssb-server, and ssb-server → ssb-server, on loopback, in one
# run. Also times ssb-server publishing (for the core issue's comparison).
#   bench/interop.sh [MESSAGES]   (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
cargo build --release --quiet
(cd tests/js && [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error)
BIN=$PWD/target/release/scuttlefs
JS=$PWD/tests/js
KEY=$(head -c 32 /dev/urandom | base64)
WORK=$(mktemp -d)
trap 'pkill -f "$WORK" 2>/dev/null; sleep 1; rm -rf $WORK' EXIT
now() { date +%s.%N; }
sbot() { local dir=$1 port=$2; shift 2; (cd $JS && node sbot.js $WORK/$dir $port "$KEY" "$@"); }
start_ssb() {  # dir port wsport
  (cd $JS && node node_modules/ssb-server/bin.js start --path $WORK/$1 --port $2 --ws.port $3 \
     --caps.shs "$KEY" --host 127.0.0.1 --no-gossip.local > $WORK/$1.log 2>&1 &)
  for _ in $(seq 300); do sbot $1 $2 whoami > /dev/null 2>&1 && return; sleep 0.2; done
  echo "ssb-server $1 did not start" >&2; exit 1
}
scuttlefs_seq() {  # path feed
  $BIN status --json --path $WORK/$1 2>/dev/null | python3 -c "
import json,sys
r=json.load(sys.stdin); print(next((f['seq'] for f in r['feeds'] if f['id']=='$2'),0))" 2>/dev/null || echo 0
}
wait_for() {  # command-that-prints-seq target
  local target=$1; shift
  while true; do s=$("$@"); [ "${s:-0}" -ge "$target" ] && return; sleep 0.1; done
}
key_of() { local id=$1; id=${id#@}; echo ${id%.ed25519}; }

echo "== ssb-server publishing 200 messages through ssb-client, one at a time"
start_ssb s0 9491 9492
t0=$(now); sbot s0 9491 publish-many 200 > /dev/null; t1=$(now)
echo "ssb-server publish: $(echo "200 / ($t1 - $t0)" | bc -l | cut -c1-6) msg/s"

# The N-message feed is written by scuttlefs (ssb-server would take hours
# to publish it one message at a time); every transfer below moves it.
seq 1 $N | sed 's/^/line /' | $BIN publish --stdin --path $WORK/d0 --caps.shs "$KEY" --type log > /dev/null
F=$($BIN whoami --path $WORK/d0 | grep -o '@[^"]*')
TOTAL=$((N + 1))   # the lines and the machine's name
RUST_LOG=warn $BIN serve --no-mount --no-discovery --path $WORK/d0 --port 9531 --caps.shs "$KEY" &
D0_PID=$!
sleep 1

echo "== scuttlefs -> ssb-server ($TOTAL messages)"
start_ssb s1 9501 9502
sbot s1 9501 follow "$F" > /dev/null
t0=$(now)
sbot s1 9501 connect "net:127.0.0.1:9531~shs:$(key_of $F)" > /dev/null
wait_for $TOTAL sbot s1 9501 latest "$F"; t1=$(now)
echo "scuttlefs -> ssb-server: $(echo "$TOTAL / ($t1 - $t0)" | bc) msg/s"
kill -TERM $D0_PID; wait $D0_PID 2>/dev/null || true

echo "== ssb-server -> ssb-server ($TOTAL messages)"
start_ssb s2 9521 9522
sbot s2 9521 follow "$F" > /dev/null
S1=$(sbot s1 9501 whoami)
t0=$(now)
sbot s2 9521 connect "net:127.0.0.1:9501~shs:$(key_of $S1)" > /dev/null
wait_for $TOTAL sbot s2 9521 latest "$F"; t1=$(now)
echo "ssb-server -> ssb-server: $(echo "$TOTAL / ($t1 - $t0)" | bc) msg/s"

echo "== ssb-server -> scuttlefs ($TOTAL messages)"
$BIN follow "$F" --path $WORK/d1 --caps.shs "$KEY" > /dev/null
t0=$(now)
RUST_LOG=warn $BIN serve --no-mount --no-discovery --path $WORK/d1 --port 9511 --caps.shs "$KEY" \
  --peer "net:127.0.0.1:9501~shs:$(key_of $S1)" &
wait_for $TOTAL scuttlefs_seq d1 "$F"; t1=$(now)
echo "ssb-server -> scuttlefs: $(echo "$TOTAL / ($t1 - $t0)" | bc) msg/s (includes daemon start)"
