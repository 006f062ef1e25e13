#!/usr/bin/env bash
# Scale benchmark (issue 12). Needs root and /dev/fuse.
#   bench/scale.sh [LINES] [MACHINES] [BURST] [RUNS]   (default 1000000 4 5000 5)
#
# MACHINES feeds are made offline with `publish --stdin`, in interleaved
# bursts of BURST lines (machine 1's burst, machine 2's, …, then again), so
# that their timestamps interleave. Each is then served by its own daemon,
# and one mounted node that follows them all dials every one at once and
# replicates LINES lines. Prints:
#   - the replication rate into the mounted node, beside the reference: one
#     of the feeds from one peer into a node without a mount, same run;
#   - its resident memory after replication, and after a restart and a full
#     read of merged.log;
#   - bytes on disk per line (the whole --path: store and views), and bytes
#     the daemon wrote per line while replicating (/proc/PID/io);
#   - `cat merged.log` and `grep -c` on it against a plain copy of the same
#     bytes (median of RUNS, interleaved, warm cache);
#   - `tail -n 10 merged.log` (median of 11);
#   - restart until mounted.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-1000000}
MACHINES=${2:-4}
BURST=${3:-5000}
RUNS=${4:-5}
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet
  BIN=$PWD/target/release/scuttlefs
fi
WORK=${WORK:-$(mktemp -d)}
MNT=$WORK/mount
KEY=$(head -c 32 /dev/urandom | base64)
# The daemons save their checkpoints as they stop: wait for them, or the
# directory (gigabytes at 10M lines) is removed from under them and stays.
cleanup() {
  pkill -f "$WORK/" 2>/dev/null || true
  for _ in $(seq 600); do pgrep -f "$WORK/" > /dev/null || break; sleep 0.1; done
  pkill -9 -f "$WORK/" 2>/dev/null || true
  fusermount3 -uz $MNT 2>/dev/null || umount -l $MNT 2>/dev/null || true
  # KEEP=1 leaves the directory, to look into.
  [ -n "${KEEP:-}" ] && echo "kept $WORK" && return
  rm -rf $WORK
}
trap cleanup EXIT
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
rss_mb() { echo $(( $(awk '/VmRSS/ {print $2}' /proc/$1/status) / 1024 )); }

per_machine=$((LINES / MACHINES))
# FEEDS=dir keeps the made feeds there, and reuses them when they are
# there already (the sink is always made afresh).
if [ -n "${FEEDS:-}" ]; then
  mkdir -p "$FEEDS"
  for m in $(seq "$MACHINES"); do
    if [ -d "$FEEDS/src$m" ]; then cp -r "$FEEDS/src$m" $WORK/; fi
  done
fi
t0=$(now)
made=0
[ -d $WORK/src1 ] && made=$per_machine
while [ $made -lt $per_machine ]; do
  n=$(( per_machine - made < BURST ? per_machine - made : BURST ))
  for m in $(seq "$MACHINES"); do
    seq $((made + 1)) $((made + n)) | sed "s/^/backup of \/home on machine $m chunk /; s/\$/ finished ok/" \
      | $BIN publish --stdin --path $WORK/src$m --type log --source backup > /dev/null
  done
  made=$((made + n))
done
echo "made $MACHINES feeds of $per_machine lines in bursts of $BURST: $(echo "$(now) - $t0" | bc | cut -c1-6)s"
if [ -n "${FEEDS:-}" ] && [ ! -d "$FEEDS/src1" ]; then
  for m in $(seq "$MACHINES"); do cp -r $WORK/src$m "$FEEDS/"; done
fi
# MAKE_ONLY=1 stops here (with FEEDS, to make the feeds ahead of a run).
[ -n "${MAKE_ONLY:-}" ] && exit 0

peers=()
ids=()
total=0
for m in $(seq "$MACHINES"); do
  id=$($BIN whoami --path $WORK/src$m | grep -o '@[^"]*')
  ids+=("$id")
  key=${id#@}; key=${key%.ed25519}
  $BIN follow "$id" --path $WORK/sink > /dev/null
  peers+=(--peer "net:127.0.0.1:$((9400 + m))~shs:$key")
  RUST_LOG=warn $BIN serve --no-mount --no-discovery --path $WORK/src$m --port $((9400 + m)) --caps.shs "$KEY" &
  total=$((total + per_machine + 1))   # the lines and the machine's name
done
sleep 1

# The reference: one of those feeds replicated from one peer into a node
# without a mount, as bench/replicate.sh does, in the same run.
id1=${ids[0]}
$BIN follow "$id1" --path $WORK/reference > /dev/null
t0=$(now)
RUST_LOG=warn $BIN serve --no-mount --no-discovery --path $WORK/reference --port 9399 \
  --caps.shs "$KEY" "${peers[0]}" "${peers[1]}" > /dev/null 2>&1 &
REF_PID=$!
ref_total=$((per_machine + 1))
ref_held() {
  $BIN status --json --path $WORK/reference 2>/dev/null | awk -v id="\"$id1\"," '
    /"feeds":/ {feeds=1}
    feeds && $1 == "\"id\":" && $2 == id {hit=1}
    hit && $1 == "\"seq\":" {gsub(",", "", $2); print $2; exit}'
}
while [ "$(ref_held)" != "$ref_total" ]; do sleep 0.1; done
ref_secs=$(echo "$(now) - $t0" | bc -l)
ref_rate=$(echo "$ref_total / $ref_secs" | bc)
echo "reference: $ref_total messages from one peer into a node without a mount in $(echo $ref_secs | cut -c1-6)s = $ref_rate msg/s"
kill -TERM $REF_PID; wait $REF_PID 2>/dev/null || true
rm -rf $WORK/reference

start_sink() {
  RUST_LOG=warn $BIN serve --path $WORK/sink --mount $MNT --name sink --no-discovery --port 9400 \
    --caps.shs "$KEY" "${peers[@]}" > $WORK/sink.log 2>&1 &
  echo $! > $WORK/pid
  for _ in $(seq 1200); do [ -s $MNT/whoami ] && return; sleep 0.05; done
  echo "the sink did not mount" >&2; cat $WORK/sink.log >&2; exit 1
}
# The sum of the sequences the sink holds of the machines' feeds.
held() {
  $BIN status --json --path $WORK/sink 2>/dev/null | awk '
    /"feeds":/ {feeds=1}
    feeds && $1 == "\"seq\":" {gsub(",", "", $2); sum += $2}
    END {print sum + 0}'
}

t0=$(now)
start_sink
PID=$(cat $WORK/pid)
own=1   # the sink's own name message
while [ "$(held)" -lt $((total + own)) ]; do sleep 0.1; done
t1=$(now)
secs=$(echo "$t1 - $t0" | bc -l)
rate=$(echo "$total / $secs" | bc)
echo "replicated $total messages from $MACHINES peers into the mounted node in $(echo $secs | cut -c1-6)s = $rate msg/s (from daemon start); $(echo "$rate / $ref_rate" | bc -l | cut -c1-4)x the reference"
written=$(awk '/^write_bytes/ {print $2}' /proc/$PID/io)
echo "daemon RSS after replication: $(rss_mb $PID) MB"
lines=$(wc -l < $MNT/merged.log)
# The checkpoint saved after the merge lets the generation before it go.
gone_before() { [ "$(ls $WORK/sink | grep -c '\.sorted-')" -le 1 ]; }
# The daemon merges lines that arrived out of order into merged.log's file
# in the background; wait for it (status says how many lines wait).
unmerged() { $BIN status --json --path $WORK/sink | awk '/"unmerged_lines":/ {gsub(",", "", $2); print ($2 == "null" ? 0 : $2)}'; }
t0=$(now)
while [ "$(unmerged)" != 0 ]; do sleep 0.1; done
echo "merged.log's late lines merged $(echo "$(now) - $t0" | bc | cut -c1-5)s after the last message"
echo "daemon RSS then: $(rss_mb $PID) MB"
for _ in $(seq 600); do gone_before && break; sleep 0.1; done
# The log's older records are compressed in the background, as they
# become durable: wait until its file stops shrinking.
log_blocks() { du -B1 $WORK/sink/db/messages.log | cut -f1; }
t0=$(now)
for _ in $(seq 60); do a=$(log_blocks); sleep 2; [ "$(log_blocks)" = "$a" ] && break; done
echo "the message log's older records compressed $(echo "$(now) - $t0" | bc | cut -c1-5)s later"
disk=$(du -sB1 $WORK/sink | cut -f1)
echo "lines in merged.log: $lines; on disk: $((disk / 1024 / 1024)) MB = $((disk / lines)) bytes/line; written while replicating: $((written / 1024 / 1024)) MB = $((written / lines)) bytes/line"
for f in $WORK/sink/* $WORK/sink/db/*; do echo "  $(du -sB1 $f)"; done

cp $MNT/merged.log $WORK/plain.log
cmp $MNT/merged.log $WORK/plain.log && echo "merged.log: $(stat -c %s $WORK/plain.log) bytes, same as the plain copy"
sort -s -k1,1 $WORK/plain.log | cmp -s - $WORK/plain.log && echo "merged.log is in timestamp order"
sync; sleep 2
: > $WORK/cat_plain; : > $WORK/cat_fuse; : > $WORK/grep_plain; : > $WORK/grep_fuse
for _ in $(seq "$RUNS"); do
  s=$(now); cat $WORK/plain.log > /dev/null; e=$(now); echo "$e - $s" | bc -l >> $WORK/cat_plain
  s=$(now); cat $MNT/merged.log > /dev/null; e=$(now); echo "$e - $s" | bc -l >> $WORK/cat_fuse
  s=$(now); grep -c chunk $WORK/plain.log > $WORK/count; e=$(now); echo "$e - $s" | bc -l >> $WORK/grep_plain
  s=$(now); grep -c chunk $MNT/merged.log > $WORK/count; e=$(now); echo "$e - $s" | bc -l >> $WORK/grep_fuse
done
cp_s=$(median < $WORK/cat_plain); cf_s=$(median < $WORK/cat_fuse)
gp_s=$(median < $WORK/grep_plain); gf_s=$(median < $WORK/grep_fuse)
echo "cat: plain ${cp_s}s, merged.log ${cf_s}s, ratio $(echo "$cp_s / $cf_s" | bc -l | cut -c1-5)"
echo "grep -c: plain ${gp_s}s, merged.log ${gf_s}s, ratio $(echo "$gp_s / $gf_s" | bc -l | cut -c1-5)"
tail_ms=$(for _ in $(seq 11); do s=$(now); tail -n 10 $MNT/merged.log > /dev/null; e=$(now); echo "($e - $s) * 1000" | bc -l; done | median)
plain_tail_ms=$(for _ in $(seq 11); do s=$(now); tail -n 10 $WORK/plain.log > /dev/null; e=$(now); echo "($e - $s) * 1000" | bc -l; done | median)
echo "tail -n 10 merged.log: $(echo $tail_ms | cut -c1-6) ms (plain file $(echo $plain_tail_ms | cut -c1-6) ms)"

kill -TERM $PID; while kill -0 $PID 2>/dev/null; do sleep 0.05; done
t0=$(now); start_sink; t1=$(now)
echo "restart with $lines lines: $(echo "$t1 - $t0" | bc -l | cut -c1-5)s until mounted"
cat $MNT/merged.log > /dev/null
echo "daemon RSS after restart and a full read: $(rss_mb $(cat $WORK/pid)) MB"
