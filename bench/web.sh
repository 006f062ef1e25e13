#!/usr/bin/env bash
# The status page and the log follower at size (issue 22).
#   bench/web.sh [LINES] [JOBS] [RUNS]   (default 10000000 1000 21)
#
# One headless daemon (release build) takes LINES lines through
# `publish --stdin` (in chunks of a million), then JOBS jobs through
# `scuttlefs run` (one in ten failing). Then, beside references measured
# in the same run:
#   - `/` and `/metrics`: server time from the Server-Timing header and the
#     whole request from curl, median of RUNS; beside `scuttlefs health`
#     (the same report as a table, through the control socket) and
#     `health --json`, wall time, median of RUNS;
#   - the live update: from the end of a failing `scuttlefs run` to the
#     server-sent event that shows it failed, median of 9; beside the time
#     until `health --json` shows it (polled every 5 ms), same runs;
#   - `log --follow --format text` reading the whole log from no cursor:
#     messages a second; beside a second node replicating 1,000,000 of
#     them from the first (createHistoryStream/EBT over loopback), with a
#     follower on that node, and how far the follower was behind when the
#     replication finished.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-10000000}
JOBS=${2:-1000}
RUNS=${3:-21}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/scuttlefs
fi
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
A=$WORK/a
B=$WORK/b
KEY=$(head -c 32 /dev/urandom | base64)
cleanup() {
  pkill -f "$WORK/" 2>/dev/null || true
  for _ in $(seq 600); do pgrep -f "$WORK/" > /dev/null || break; sleep 0.1; done
  pkill -9 -f "$WORK/" 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"
  # A kept run keeps the filled node only: the rest is made again.
  [ -z "${KEEP:-}" ] || rm -rf "$WORK/b" "$WORK/c" "$WORK"/cursor-* "$WORK/b-follow.txt"
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn $BIN serve --path "$A" --no-mount --no-discovery --port 0 --caps.shs "$KEY" \
  --http "127.0.0.1:$HTTP_PORT" --name bench-a 2> "$WORK/a.log" &
for _ in $(seq 200); do [ -S "$A/scuttlefs.sock" ] && break; sleep 0.1; done
URL=http://127.0.0.1:$HTTP_PORT

if [ -e "$WORK/filled" ]; then
  echo "== reusing the $LINES lines and $JOBS jobs in $WORK (KEEP=1 kept them)"
else
echo "== filling: $LINES lines, $JOBS jobs"
start=$(now)
chunk=1000000
done_lines=0
while [ "$done_lines" -lt "$LINES" ]; do
  n=$(( LINES - done_lines < chunk ? LINES - done_lines : chunk ))
  seq "$((done_lines + 1))" "$((done_lines + n))" \
    | awk '{printf "line %d of the benchmark: backup of /srv/data/%d finished without trouble\n", $1, $1 % 977}' \
    | $BIN publish --stdin --path "$A" --type log --source bulk > /dev/null
  done_lines=$((done_lines + n))
done
echo "lines: $(awk -v s="$start" -v e="$(now)" -v n="$LINES" 'BEGIN {printf "%.0f lines/s", n/(e-s)}')"
start=$(now)
for i in $(seq "$JOBS"); do
  if [ $((i % 10)) -eq 0 ]; then
    $BIN run --path "$A" --source "job-$i" --every 1d --quiet -- sh -c 'echo disk full; exit 1' || true
  else
    $BIN run --path "$A" --source "job-$i" --every 1d --quiet -- true
  fi
done
echo "jobs: $JOBS in $(awk -v s="$start" -v e="$(now)" 'BEGIN {printf "%.1f s", e-s}')"
touch "$WORK/filled"
fi
{ $BIN health --path "$A" --json || true; } | python3 -c 'import json,sys; r=json.load(sys.stdin)["rows"]; print("health rows:", len(r))'

server_time() { # URL -> "server_ms total_ms"
  curl -s -o /dev/null -D - -w 'total %{time_total}\n' "$1" \
    | awk '/^server-timing:/ {split($2, a, "="); s=a[2]+0} /^total/ {t=$2*1000} END {printf "%.2f %.2f\n", s, t}'
}
wall_ms() { local s e; s=$(now); "$@" > /dev/null || true; e=$(now); awk -v s="$s" -v e="$e" 'BEGIN {printf "%.2f\n", (e-s)*1000}'; }

for page in / /metrics; do
  server_time "$URL$page" > /dev/null  # warm
  : > "$WORK/times"
  for _ in $(seq "$RUNS"); do server_time "$URL$page" >> "$WORK/times"; done
  echo "$page: server $(cut -d' ' -f1 "$WORK/times" | median) ms, whole request $(cut -d' ' -f2 "$WORK/times" | median) ms (median of $RUNS); $(curl -s "$URL$page" | wc -c) bytes"
done
: > "$WORK/ref"; : > "$WORK/refj"
for _ in $(seq "$RUNS"); do
  wall_ms $BIN health --path "$A" >> "$WORK/ref"
  wall_ms $BIN health --path "$A" --json >> "$WORK/refj"
done
echo "reference: scuttlefs health $(median < "$WORK/ref") ms, health --json $(median < "$WORK/refj") ms (wall, median of $RUNS)"

echo "== live update"
python3 - "$URL" "$BIN" "$A" <<'PY'
import re, subprocess, sys, threading, time, urllib.request, json, statistics
url, binary, path = sys.argv[1:4]
events = []  # (time, data)
def listen():
    with urllib.request.urlopen(url + "/events") as stream:
        data = []
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and data:
                events.append((time.monotonic(), "\n".join(data)))
                data = []
threading.Thread(target=listen, daemon=True).start()
time.sleep(2)
sse, ref = [], []
for i in range(9):
    source = f"sse-{i}-{time.time_ns()}"
    pattern = re.compile(r'<tr class="r-failed">.*' + re.escape(source))
    subprocess.run([binary, "run", "--path", path, "--source", source, "--quiet", "--", "false"])
    ended = time.monotonic()
    seen = None
    while time.monotonic() - ended < 10:
        if any(t >= ended - 1 and pattern.search(d) for t, d in events):
            seen = min(t for t, d in events if pattern.search(d)) - ended
            break
        time.sleep(0.002)
    sse.append(seen if seen is not None else float("inf"))
    # The reference: the same kind of change, seen by polling health --json.
    source = f"ref-{i}-{time.time_ns()}"
    subprocess.run([binary, "run", "--path", path, "--source", source, "--quiet", "--", "false"])
    ended = time.monotonic()
    while True:
        out = subprocess.run([binary, "health", "--path", path, "--json"], capture_output=True).stdout
        rows = json.loads(out)["rows"]
        if any(r["source"] == source and r["state"] == "failed" for r in rows):
            ref.append(time.monotonic() - ended)
            break
        time.sleep(0.005)
    time.sleep(0.3)
print("SSE after the run ended: median %.3f s (runs %s)" % (statistics.median(sse), ", ".join("%.3f" % s for s in sse)))
print("reference, health --json polled: median %.3f s" % statistics.median(ref))
PY

echo "== log --follow"
total=$($BIN status --path "$A" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages"])')
start=$(now)
$BIN log --path "$A" --format text --cursor-file "$WORK/cursor-a" | wc -l > "$WORK/followed"
end=$(now)
echo "log --cursor-file from the start: $total messages, $(cat "$WORK/followed") lines in $(awk -v s="$start" -v e="$end" 'BEGIN {printf "%.1f s", e-s}'), $(awk -v s="$start" -v e="$end" -v n="$total" 'BEGIN {printf "%.0f msg/s", n/(e-s)}')"

# Replication of 1,000,000 messages into a second node, a follower on it.
rm -rf "$WORK/b" "$WORK/c"
REPL=${REPL:-1000000}
C=$WORK/c
seq "$REPL" | awk '{printf "replicated line %d: rsync of /home/user/%d done\n", $1, $1 % 331}' \
  | $BIN publish --stdin --path "$C" --caps.shs "$KEY" --type log --source repl > /dev/null
C_ID=$($BIN whoami --path "$C" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"id\"])")
RUST_LOG=warn $BIN serve --path "$C" --no-mount --no-discovery --port 0 --caps.shs "$KEY" --http off --name bench-c 2> "$WORK/c.log" &
for _ in $(seq 200); do [ -S "$C/scuttlefs.sock" ] && break; sleep 0.1; done
C_PORT=$($BIN status --path "$C" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["listening"].rsplit(":",1)[1])')
C_KEY=${C_ID#@}; C_KEY=${C_KEY%.ed25519}
$BIN follow --path "$B" --caps.shs "$KEY" "$C_ID" > /dev/null
RUST_LOG=warn $BIN serve --path "$B" --no-mount --no-discovery --port 0 --caps.shs "$KEY" --http off --name bench-b \
  --peer "net:127.0.0.1:$C_PORT~shs:$C_KEY" 2> "$WORK/b.log" &
for _ in $(seq 200); do [ -S "$B/scuttlefs.sock" ] && break; sleep 0.1; done
start=$(now)
$BIN log --path "$B" --follow --format text --cursor-file "$WORK/cursor-b" > "$WORK/b-follow.txt" &
FOLLOWER=$!
tip() { $BIN status --path "$B" --json | python3 -c "import json,sys; f=[x for x in json.load(sys.stdin)['feeds'] if x['id']=='$C_ID']; print(f[0]['seq'] if f else 0)"; }
while [ "$(tip)" -lt "$REPL" ]; do sleep 0.2; done
replicated=$(now)
while [ "$(grep -c 'replicated line' "$WORK/b-follow.txt" || true)" -lt "$REPL" ]; do sleep 0.05; done
followed=$(now)
kill $FOLLOWER
echo "replication into a second node: $REPL messages in $(awk -v s="$start" -v e="$replicated" -v n="$REPL" 'BEGIN {printf "%.1f s, %.0f msg/s", e-s, n/(e-s)}'); its follower printed the last $(awk -v s="$replicated" -v e="$followed" 'BEGIN {printf "%.3f s", e-s}') after"
