#!/usr/bin/env bash
# Smoke test of warren-bench against a freshly started Warren: a few thousand messages
# in each of the main modes, checking only that nothing was lost or duplicated
# (lost=0, dup=0, status=ok on the RESULT line). No timing assertions.
#
# Usage: tools/bench/smoke.sh [WARREN_BIN [WARREN_BENCH_BIN]]
#        (defaults build/warren and build/warren-bench)
# Exit status 0 if every run passed. Bounded: each run has --timeout 60 and the
# broker gets 10 s to start.
set -u
cd "$(dirname "$0")/../.."
WARREN=${1:-build/warren}
BENCH=${2:-build/warren-bench}
for f in "$WARREN" "$BENCH"; do
  [ -x "$f" ] || { echo "smoke: $f is missing (make $f)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/warren-bench-smoke.XXXXXX)
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$WARREN" --port "$PORT" --bind 127.0.0.1 --data "$WORK/data" --log-level warn >"$WORK/warren.log" 2>&1 &
WPID=$!
cleanup() {
  kill -TERM "$WPID" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$WPID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$WPID" 2>/dev/null
  wait "$WPID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

ready=0
for _ in $(seq 100); do
  if "$BENCH" --port "$PORT" --connections 1 --hold 0 --timeout 5 --quiet >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "smoke: Warren did not accept AMQP connections on port $PORT" >&2
  cat "$WORK/warren.log" >&2
  exit 1
fi

failed=0
run() { # run NAME ARGS...
  local name=$1 out line
  shift
  out=$("$BENCH" --port "$PORT" --broker warren --scenario "$name" --timeout 60 --quiet "$@" 2>&1)
  line=$(grep '^RESULT ' <<<"$out" | tail -1)
  if [[ " $line " == *" lost=0 "* && " $line " == *" dup=0 "* && " $line " == *" status=ok "* ]]; then
    echo "ok   $name"
  else
    echo "FAIL $name"
    echo "$out" | sed 's/^/     /'
    failed=$((failed + 1))
  fi
}

run no-ack       --count 5000 --size 16
run acks         --count 5000 --size 1024 --prefetch 100 --ack 10
run confirms     --count 3000 --size 256 --persistent --confirm 100 --prefetch 100 --ack 10
run confirm-each --count 500 --size 256 --confirm 1 --ack 1
run fanout       --count 1000 --size 64 --fanout --queues 3
run queues       --count 4000 --size 64 --producers 2 --consumers 2 --queues 2
run after        --count 2000 --size 64 --confirm 50 --consume-after
run paced        --rate 2000 --duration 1 --size 64 --ack 1
run big-bodies   --count 200 --size 300000 --persistent --confirm 20 --prefetch 50 --ack 10
run no-batch     --count 3000 --size 256 --confirm 100 --prefetch 100 --ack 10 --no-batch
run dead-letter  --count 3000 --size 256 --dead-letter-ttl 0
if "$BENCH" --port "$PORT" --connections 50 --hold 0.5 --timeout 30 --quiet >"$WORK/idle.out" 2>&1 &&
   grep -q ' status=ok' "$WORK/idle.out"; then
  echo "ok   idle-connections"
else
  echo "FAIL idle-connections"; sed 's/^/     /' "$WORK/idle.out"; failed=$((failed + 1))
fi

# S6's floor tool (no broker): every message through the relay, once, in order.
FLOOR=${FLOOR_BIN:-$(dirname "$BENCH")/relay-floor}
if [ -x "$FLOOR" ]; then
  if timeout 30 "$FLOOR" --rate 2000 --duration 1 --size 64 >"$WORK/floor.out" 2>&1 &&
     grep -q ' received=2000 out_of_order=0 .* status=ok' "$WORK/floor.out"; then
    echo "ok   relay-floor"
  else
    echo "FAIL relay-floor"; sed 's/^/     /' "$WORK/floor.out"; failed=$((failed + 1))
  fi
fi

if ! kill -0 "$WPID" 2>/dev/null; then
  echo "FAIL Warren exited during the smoke test"; cat "$WORK/warren.log"; failed=$((failed + 1))
fi
echo "warren-bench smoke: $failed failed"
[ "$failed" -eq 0 ]
