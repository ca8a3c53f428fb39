#!/bin/bash
# Acceptance check: Debian's amqp-tools (rabbitmq-c command line tools) against the broker.
#
# Usage: amqp_tools_check.sh [AMQP_URL | PORT]
# The broker URL comes from the first argument (a full URL or a bare port number),
# else from $AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/.
# The broker must already be running; this script starts nothing.
#
# Note: rabbitmq-c reads the path of a URL as the vhost, so ".../" means the vhost ""
# (not "/"), as the AMQP URI spec says; pika and amqplib treat ".../" as "/". A URL
# ending in a single "/" is therefore passed to the tools without that slash.
#
# Exit status 0 only if every check passed. Every tool call is bounded by `timeout`.
set -u
ARG=${1:-${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}}
if [[ $ARG =~ ^[0-9]+$ ]]; then URL="amqp://guest:guest@127.0.0.1:$ARG"; else URL=$ARG; fi
if [[ $URL =~ ^amqps?://[^/]*/$ ]]; then URL=${URL%/}; fi
echo "broker: $URL  ($(dpkg-query -W -f '${Package} ${Version}' amqp-tools 2>/dev/null))"

T="timeout 10"
Q="acc.tools.$$"
Q2="acc.tools.topic.$$"
TMP=$(mktemp -d /tmp/acc-tools.XXXXXX)
FAILS=0

check() {   # check DESCRIPTION COMMAND...   (passes when COMMAND succeeds)
    local what=$1; shift
    if "$@"; then echo "ok   $what"; else echo "FAIL $what"; FAILS=$((FAILS + 1)); fi
}
same() { cmp -s "$1" "$2"; }   # byte-exact file comparison
exec 3>&2   # commands are shown on the original stderr, even when a call redirects 2
run() { echo "\$ $(printf '%q ' "$@")" | sed "s#$URL#\$URL#g" >&3; "$@"; }

echo "-- declare, publish, get, consume on $Q"
run $T amqp-declare-queue -u "$URL" -q "$Q" -d >"$TMP/declared"
printf '%s\n' "$Q" >"$TMP/expect"
check "amqp-declare-queue -d prints the queue name: $(cat "$TMP/declared")" same "$TMP/declared" "$TMP/expect"

run $T amqp-publish -u "$URL" -r "$Q" -b "hello 1"
check "amqp-publish -b 'hello 1' exit 0" test $? -eq 0
run $T amqp-publish -u "$URL" -r "$Q" -b "hello 2" -p -C text/plain
check "amqp-publish -b 'hello 2' -p -C text/plain exit 0" test $? -eq 0
printf 'line a\nline b\n' | run $T amqp-publish -u "$URL" -r "$Q" -l
check "amqp-publish -l (two lines) exit 0" test $? -eq 0
head -c 300000 /dev/urandom >"$TMP/big.bin"     # > frame_max: several body frames
run $T amqp-publish -u "$URL" -r "$Q" <"$TMP/big.bin"
check "amqp-publish of a 300000-byte binary body from stdin exit 0" test $? -eq 0

run $T amqp-get -u "$URL" -q "$Q" >"$TMP/got1"
printf 'hello 1' >"$TMP/expect"
check "amqp-get returns exactly 'hello 1' ($(od -An -c "$TMP/got1" | tr -s ' '))" same "$TMP/got1" "$TMP/expect"

run $T amqp-consume -u "$URL" -q "$Q" -c 3 -p 1 -- cat >"$TMP/got3"
check "amqp-consume -c 3 exit 0" test $? -eq 0
printf 'hello 2line a\nline b\n' >"$TMP/expect"
check "amqp-consume -c 3 -- cat: exactly 'hello 2', 'line a\\n', 'line b\\n' ($(od -An -c "$TMP/got3" | tr -s ' ' | tr -d '\n'))" \
    same "$TMP/got3" "$TMP/expect"

run $T amqp-get -u "$URL" -q "$Q" >"$TMP/gotbig"
check "amqp-get returns the 300000-byte binary body byte for byte ($(stat -c %s "$TMP/gotbig") bytes)" \
    same "$TMP/gotbig" "$TMP/big.bin"

run $T amqp-get -u "$URL" -q "$Q" >"$TMP/empty"
rc=$?
check "amqp-get on the now empty queue: exit 2, no output (exit $rc, $(stat -c %s "$TMP/empty") bytes)" \
    test "$rc" -eq 2 -a ! -s "$TMP/empty"

echo "-- amqp-consume -e amq.topic -r 'acc.tools.#' (declares auto-delete $Q2 and binds it)"
run $T amqp-consume -u "$URL" -q "$Q2" -e amq.topic -r 'acc.tools.#' -c 2 -- cat >"$TMP/got4" &
CONSUMER=$!
# wait (bounded) until the consumer has declared its queue: amqp-get then exits 2 (empty)
for _ in $(seq 50); do
    timeout 5 amqp-get -u "$URL" -q "$Q2" >/dev/null 2>&1; [ $? -eq 2 ] && break; sleep 0.1
done
sleep 0.2   # the binding follows the declare on the consumer's connection
run $T amqp-publish -u "$URL" -e amq.topic -r other.created -b "not routed"
run $T amqp-publish -u "$URL" -e amq.topic -r acc.tools.created -b "routed 1"
run $T amqp-publish -u "$URL" -e amq.topic -r acc.tools.a.b -b "routed 2"
wait $CONSUMER
check "amqp-consume -e -r -c 2 exit 0" test $? -eq 0
printf 'routed 1routed 2' >"$TMP/expect"
check "it got exactly 'routed 1' then 'routed 2', not 'not routed': $(cat "$TMP/got4")" same "$TMP/got4" "$TMP/expect"
run $T amqp-get -u "$URL" -q "$Q2" >/dev/null 2>"$TMP/err"
check "its auto-delete queue is gone after it exits: $(tr -d '\n' <"$TMP/err")" grep -q 404 "$TMP/err"

echo "-- clean up"
run $T amqp-delete-queue -u "$URL" -q "$Q" >"$TMP/del1"
check "amqp-delete-queue $Q reports 0 messages: $(cat "$TMP/del1")" test "$(cat "$TMP/del1")" = 0
run $T amqp-get -u "$URL" -q "$Q" >/dev/null 2>"$TMP/err"
check "amqp-get on the deleted queue fails with 404: $(tr -d '\n' <"$TMP/err")" grep -q 404 "$TMP/err"

rm -rf "$TMP"
if [ "$FAILS" -eq 0 ]; then echo "RESULT: PASS (0 failed check(s))"; exit 0; fi
echo "RESULT: FAIL ($FAILS failed check(s))"; exit 1
