#!/usr/bin/env bash
# Reach benchmark (issue 11): an N-message feed at site A reaches site B
#   - directly (B's daemon in the middle host, dialling A: the reference),
#   - through a scuttlefs pub in the middle (A -> pub -> B, all started at once),
#   - through an ssb-room 1.3.0 tunnel in the middle,
# then the latency of single live lines through the room.
# Sites and the middle are network namespaces made here (root needed);
# the middle does not forward, so B reaches A only through it.
#   bench/reach.sh [MESSAGES] [RUNS] [LATENCY_SAMPLES]   (default 100000, 3, 9)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
RUNS=${2:-3}
SAMPLES=${3:-9}
cargo build --release --quiet
BIN=$PWD/target/release/scuttlefs
ROOM_JS=$PWD/tests/js-room
[ -e "$ROOM_JS/node_modules/ssb-room/bin.js" ] || (cd "$ROOM_JS" && npm ci --no-audit --no-fund --loglevel=error)
KEY=$(head -c 32 /dev/urandom | base64)
WORK=$(mktemp -d)
P=sfb$$
A=${P}a; B=${P}b; M=${P}m
MID=10.71.0.1

ROOMPID=
cleanup() {
  pkill -f "$WORK" 2>/dev/null || true
  [ -n "$ROOMPID" ] && kill "$ROOMPID" 2>/dev/null || true
  sleep 0.5
  for ns in $A $B $M; do ip netns del $ns 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for ns in $A $B $M; do ip netns add $ns; ip -n $ns link set lo up; done
ip -n $M addr add $MID/32 dev lo
ip netns exec $M sysctl -qw net.ipv4.ip_forward=0
for side in A:$A:1 B:$B:2; do
  IFS=: read -r name ns net <<< "$side"
  ip link add eth$name netns $M type veth peer name eth0 netns $ns
  ip -n $M addr add 10.71.$net.1/24 dev eth$name; ip -n $M link set eth$name up
  ip -n $ns addr add 10.71.$net.2/24 dev eth0; ip -n $ns link set eth0 up
  ip -n $ns route add $MID/32 via 10.71.$net.1
done
in_ns() { local ns=$1; shift; nsenter --net=/var/run/netns/$ns "$@"; }

# The source feed, made once, and the ids.
seq 1 "$N" | sed 's/^/line through the middle /' \
  | $BIN publish --stdin --path $WORK/a --type log --source bench > /dev/null
id_of() { $BIN whoami --path "$1" | grep -o '@[^"]*'; }
A_ID=$(id_of $WORK/a); A_KEY=${A_ID#@}; A_KEY=${A_KEY%.ed25519}

serve() { # NS PATH [ARGS...]: starts a daemon; its pid is left in PID
  local ns=$1 path=$2; shift 2
  # nsenter itself (not a shell function) in the background: it becomes
  # the daemon, so $! is the daemon's pid.
  RUST_LOG=warn nsenter --net=/var/run/netns/$ns $BIN serve --no-mount --no-discovery \
    --path "$path" --port 8008 --caps.shs "$KEY" "$@" >> "$path.log" 2>&1 &
  PID=$!
}
stop() { # PIDS...: SIGTERM, and wait until each is gone
  kill -TERM "$@" 2>/dev/null || true
  for p in "$@"; do while kill -0 "$p" 2>/dev/null; do sleep 0.05; done; done
}
seq_of() { # PATH FEED: the feed's latest sequence in PATH's daemon
  $BIN status --json --path "$1" 2>/dev/null \
    | awk -v id="\"$2\"," '/"feeds":/ {feeds=1} feeds && $1 == "\"id\":" && $2 == id {hit=1} hit && $1 == "\"seq\":" {gsub(",", "", $2); print $2; exit}' || true
}
POLL=0.05
wait_for() { # PATH FEED SEQ
  while true; do
    local s; s=$(seq_of "$1" "$2"); s=${s:-0}
    [ "$s" -ge "$3" ] && return
    sleep $POLL
  done
}
# A new machine B each run (a copy of an old one would fork its feed at
# the peers that replicated it before).
fresh_b() {
  rm -rf $WORK/b
  $BIN follow "$A_ID" --path $WORK/b > /dev/null
  B_ID=$(id_of $WORK/b)
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
wait_port() { # NS HOST PORT
  for _ in $(seq 100); do
    in_ns "$1" timeout 1 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return
    sleep 0.1
  done
  echo "port $2:$3 never opened" >&2; exit 1
}

# 1. Direct: B's daemon sits in the middle host and dials A.
direct=()
for run in $(seq "$RUNS"); do
  fresh_b
  serve $A $WORK/a; APID=$PID
  wait_port $M 10.71.1.2 8008
  TOTAL=$(seq_of $WORK/a "$A_ID")
  start=$(date +%s.%N)
  serve $M $WORK/b --peer "net:10.71.1.2:8008~shs:$A_KEY"; BPID=$PID
  wait_for $WORK/b "$A_ID" $TOTAL
  end=$(date +%s.%N)
  direct+=("$(echo "$TOTAL / ($end - $start)" | bc)")
  echo "direct run $run: ${direct[-1]} msg/s ($TOTAL messages)"
  stop $APID $BPID
done

# 2. Through a scuttlefs pub: A and B redeem invites once; then each run
# starts with an empty pub and an empty B, all three at once.
through_pub=()
PUB_HOME=$WORK/pub-template
$BIN whoami --path $PUB_HOME > /dev/null
for run in $(seq "$RUNS"); do
  fresh_b
  rm -rf $WORK/pub; cp -r $PUB_HOME $WORK/pub
  serve $M $WORK/pub --host $MID; PUBPID=$PID
  serve $A $WORK/a; APID=$PID
  serve $B $WORK/b; BPID=$PID
  wait_port $A $MID 8008
  wait_port $M 10.71.1.2 8008
  wait_port $M 10.71.2.2 8008
  start=$(date +%s.%N)
  for side in a b; do
    code=$($BIN invite create --path $WORK/pub)
    $BIN invite accept "$code" --path $WORK/$side > /dev/null
  done
  TOTAL=$(seq_of $WORK/a "$A_ID")
  wait_for $WORK/b "$A_ID" $TOTAL
  end=$(date +%s.%N)
  through_pub+=("$(echo "$TOTAL / ($end - $start)" | bc)")
  echo "pub run $run: ${through_pub[-1]} msg/s ($TOTAL messages, A -> pub -> B, from the invites)"
  stop $PUBPID $APID $BPID
  # The invite is remembered: forget it so that the next run starts alike.
  rm -f $WORK/a/peers.json
done

# 3. Through an ssb-room tunnel.
ROOM_HOME=$WORK/room
mkdir -p $ROOM_HOME/.ssb
cat > $ROOM_HOME/.ssb/config <<EOF
{ "caps": {"shs": "$KEY"}, "host": "$MID", "port": 8008,
  "connections": {"incoming": {"net": [{"scope": "public", "transform": "shs", "host": "$MID", "port": 8008}]},
                  "outgoing": {"net": [{"transform": "shs"}]}} }
EOF
echo '{"name":"bench room","description":"scuttlefs bench"}' > $ROOM_HOME/.ssb/roomcfg
(cd $ROOM_JS && HOME=$ROOM_HOME exec nsenter --net=/var/run/netns/$M node node_modules/ssb-room/bin.js start > $WORK/room.log 2>&1) &
ROOMPID=$!
wait_port $A $MID 8008
ROOM_ID=$(grep -v '^#' $ROOM_HOME/.ssb/secret | tr -d '\n ' | grep -o '"id":"@[^"]*' | cut -d'"' -f4)
ROOM_KEY=${ROOM_ID#@}; ROOM_KEY=${ROOM_KEY%.ed25519}
ROOM="net:$MID:8008~shs:$ROOM_KEY"
through_room=()
for run in $(seq "$RUNS"); do
  fresh_b
  # A accepts tunnels only from feeds it follows.
  $BIN follow "$B_ID" --path $WORK/a > /dev/null
  serve $A $WORK/a --room "$ROOM"; APID=$PID
  wait_port $M 10.71.1.2 8008
  TOTAL=$(seq_of $WORK/a "$A_ID")
  start=$(date +%s.%N)
  serve $B $WORK/b --room "$ROOM"; BPID=$PID
  wait_for $WORK/b "$A_ID" $TOTAL
  end=$(date +%s.%N)
  through_room+=("$(echo "$TOTAL / ($end - $start)" | bc)")
  echo "room run $run: ${through_room[-1]} msg/s ($TOTAL messages, tunnelled through ssb-room)"
  if [ "$run" -lt "$RUNS" ]; then
    stop $APID $BPID
  fi
done

# 4. Latency of one live line through the room, both daemons connected.
latencies=()
POLL=0.005
next=$(seq_of $WORK/a "$A_ID")
for sample in $(seq "$SAMPLES"); do
  next=$((next + 1))
  start=$(date +%s.%N)
  echo "live line $sample" | $BIN publish --stdin --path $WORK/a --type log --source bench > /dev/null
  wait_for $WORK/b "$A_ID" $next
  end=$(date +%s.%N)
  latencies+=("$(echo "($end - $start) * 1000" | bc | cut -d. -f1)")
done
stop $APID $BPID
echo "latency samples (ms): ${latencies[*]}"

echo "median direct:       $(printf '%s\n' "${direct[@]}" | median) msg/s"
echo "median through pub:  $(printf '%s\n' "${through_pub[@]}" | median) msg/s"
echo "median through room: $(printf '%s\n' "${through_room[@]}" | median) msg/s"
echo "median live line through the room: $(printf '%s\n' "${latencies[@]}" | median) ms (from the publish command to stored at B, polled every 5 ms)"
