#!/usr/bin/env bash
# Filesystem benchmarks (issue 3). Needs root and /dev/fuse.
#   bench/fs.sh [LINES]   (default 1,000,000)
# Prints: publish rate; cat merged.log against cat of a plain file with the
# same bytes (median of 7 each, interleaved, warm cache, after the writes
# have settled); tail -n 10 (median of 11); daemon resident memory after
# publishing and after a restart.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${1:-1000000}
cargo build --release --quiet
BIN=$PWD/target/release/scuttlefs
WORK=$(mktemp -d)
MNT=$WORK/mount
trap 'kill $(cat $WORK/pid 2>/dev/null) 2>/dev/null; sleep 1; umount -l $MNT 2>/dev/null; rm -rf $WORK' EXIT

start_daemon() {
  RUST_LOG=warn $BIN serve --path $WORK/node --mount $MNT --name bench --no-discovery --port 0 &
  echo $! > $WORK/pid
  for _ in $(seq 600); do [ -s $MNT/whoami ] && return; sleep 0.1; done
  echo "daemon did not start" >&2; exit 1
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }

seq 1 "$LINES" | sed 's/^/backup of \/home chunk /; s/$/ finished ok/' > $WORK/lines.txt
start_daemon

t0=$(now); cat $WORK/lines.txt > $MNT/publish; t1=$(now)
publish_s=$(echo "$t1 - $t0" | bc -l)
echo "publish: $LINES lines in ${publish_s}s = $(echo "$LINES / $publish_s" | bc) lines/s"
rss_after_publish=$(awk '/VmRSS/ {print $2}' /proc/$(cat $WORK/pid)/status)

cp $MNT/merged.log $WORK/plain.log
bytes=$(stat -c %s $WORK/plain.log)
cmp -s $MNT/merged.log $WORK/plain.log && echo "merged.log: $bytes bytes, same as the plain copy"
# A third reference: the same bytes grown by 36 KB appends, as the daemon
# grows its line file (one append per 512 stored lines). The page cache of
# a file grown that way reads slower than that of a file written in large
# pieces, FUSE or not.
split -b 36000 --filter="cat >> $WORK/grown.log" $WORK/plain.log
# Reads are timed once the publish's writes have reached the disk, with
# the samples interleaved so that all see the same noise.
sync; sleep 2
: > $WORK/plain_all; : > $WORK/fuse_all; : > $WORK/grown_all
for _ in 1 2 3 4 5 6 7; do
  s=$(now); cat $WORK/plain.log > /dev/null; e=$(now); echo "$e - $s" | bc -l >> $WORK/plain_all
  s=$(now); cat $MNT/merged.log > /dev/null; e=$(now); echo "$e - $s" | bc -l >> $WORK/fuse_all
  s=$(now); cat $WORK/grown.log > /dev/null; e=$(now); echo "$e - $s" | bc -l >> $WORK/grown_all
done
median < $WORK/plain_all > $WORK/plain_s; median < $WORK/fuse_all > $WORK/fuse_s
echo "cat of the same bytes grown by 36 KB appends: $(median < $WORK/grown_all)s"
plain_s=$(cat $WORK/plain_s); fuse_s=$(cat $WORK/fuse_s)
echo "cat plain file: ${plain_s}s; cat merged.log: ${fuse_s}s; speed ratio (plain time / merged time): $(echo "$plain_s / $fuse_s" | bc -l | cut -c1-5)"
for _ in $(seq 11); do s=$(now); tail -n 10 $MNT/merged.log > /dev/null; e=$(now); echo "($e - $s) * 1000" | bc -l; done | median > $WORK/tail_ms
echo "tail -n 10 merged.log: $(cut -c1-6 $WORK/tail_ms) ms (plain file: $( for _ in $(seq 11); do s=$(now); tail -n 10 $WORK/plain.log > /dev/null; e=$(now); echo "($e - $s) * 1000" | bc -l; done | median | cut -c1-6) ms)"
echo "daemon RSS after publishing: $((rss_after_publish / 1024)) MB"

kill -TERM $(cat $WORK/pid); wait $(cat $WORK/pid) || true
t0=$(now); start_daemon; t1=$(now)
echo "restart with $LINES messages: $(echo "$t1 - $t0" | bc -l | cut -c1-5)s until mounted"
cat $MNT/merged.log > /dev/null
echo "daemon RSS after restart and a full read: $(( $(awk '/VmRSS/ {print $2}' /proc/$(cat $WORK/pid)/status) / 1024 )) MB"
