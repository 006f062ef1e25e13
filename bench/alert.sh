#!/usr/bin/env bash
# Alert latency (issue 21): a job fails (then recovers) on machine "nas",
# which has no alert target; machine "laptop", which replicates it over
# loopback, judges it and POSTs to a local webhook. Measures from the end
# of each `scuttlefs run` on nas to the webhook's receipt of the alert,
# and beside it, in the same run, the replication latency: from the end
# of the run to the run=end line in laptop's merged.log.
#   bench/alert.sh [CHANGES]   (default 9)
set -euo pipefail
cd "$(dirname "$0")/.."
CHANGES=${1:-9}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/scuttlefs
fi
KEY=$(head -c 32 /dev/urandom | base64)
WORK=$(mktemp -d)
trap 'pkill -f "$WORK" 2>/dev/null; sleep 0.5; umount -l $WORK/mount 2>/dev/null; rm -rf $WORK' EXIT

# The webhook: prints the time of each request it receives.
python3 - "$WORK/hook.log" > "$WORK/hook.port" <<'PY' &
import http.server, sys, time
log = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        at = time.time()
        self.rfile.read(int(self.headers.get('Content-Length', 0)))
        with open(log, 'a') as f:
            f.write('%.3f\n' % at)
        self.send_response(200); self.send_header('Content-Length', '0'); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_port, flush=True)
s.serve_forever()
PY
until [ -s "$WORK/hook.port" ]; do sleep 0.05; done
PORT=$(cat "$WORK/hook.port")
touch "$WORK/hook.log"

$BIN alert add "json://127.0.0.1:$PORT/hook" --path $WORK/laptop > /dev/null
mkdir -p $WORK/mount
RUST_LOG=warn $BIN serve --path $WORK/laptop --mount $WORK/mount --no-discovery --port 9311 --caps.shs "$KEY" &
until [ -s $WORK/mount/whoami ]; do sleep 0.1; done
LAPTOP_ID=$(cat $WORK/mount/whoami)
LAPTOP_KEY=${LAPTOP_ID#@}; LAPTOP_KEY=${LAPTOP_KEY%.ed25519}
RUST_LOG=warn $BIN serve --path $WORK/nas --no-mount --no-discovery --port 9312 --caps.shs "$KEY" \
  --peer "net:127.0.0.1:9311~shs:$LAPTOP_KEY" &
until $BIN whoami --path $WORK/nas > $WORK/nas.id 2>/dev/null; do sleep 0.1; done
NAS_ID=$(grep -o '@[^"]*' $WORK/nas.id)
echo "$NAS_ID" >> $WORK/mount/follow
# Connected and the alert thread under way: a first job, judged ok.
$BIN run --path $WORK/nas --source backup --quiet -- true
until grep -q 'run=end' $WORK/mount/merged.log 2>/dev/null; do sleep 0.05; done
sleep 2

alerts=()
lines=()
for i in $(seq "$CHANGES"); do
  if [ $((i % 2)) -eq 1 ]; then cmd="exit 23"; else cmd="true"; fi
  before=$(wc -l < "$WORK/hook.log")
  ends_before=$(grep -c 'run=end' $WORK/mount/merged.log)
  $BIN run --path $WORK/nas --source backup --quiet -- sh -c "$cmd" || true
  ended=$(date +%s.%N)
  line_at=""
  while [ "$(wc -l < "$WORK/hook.log")" -le "$before" ]; do
    if [ -z "$line_at" ] && [ "$(grep -c 'run=end' $WORK/mount/merged.log)" -gt "$ends_before" ]; then
      line_at=$(date +%s.%N)
    fi
    sleep 0.01
  done
  got=$(tail -n 1 "$WORK/hook.log")
  [ -n "$line_at" ] || line_at=$got
  alert=$(echo "$got - $ended" | bc -l)
  line=$(echo "$line_at - $ended" | bc -l)
  printf 'change %d (%s): the line in %.3f s, the alert in %.3f s\n' "$i" "$cmd" "$line" "$alert"
  alerts+=("$alert")
  lines+=("$line")
  sleep 1.5
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf 'median of %d: the alert %.3f s after the run ended; the run=end line in merged.log %.3f s\n' \
  "$CHANGES" "$(median "${alerts[@]}")" "$(median "${lines[@]}")"
