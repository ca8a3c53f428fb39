#!/bin/bash
# Runs every acceptance check against an already running broker.
# Usage: run_all.sh [AMQP_URL | PORT]      (default: $AMQP_URL, else port 5672)
# Needs: python3-pika, python3-celery, amqp-tools (Debian) and `npm install` here.
# Exit status 0 only if every script passed; prints one summary line per script.
set -u
cd "$(dirname "$0")"
TARGET=${1:-${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}}
declare -A RESULT
FAILED=0
for check in pika_workqueue.py pika_pubsub.py celery_check.py amqplib_check.js amqp_tools_check.sh; do
    echo "===== $check $TARGET"
    case $check in
        *.py) timeout 60 /usr/bin/python3 "$check" "$TARGET" ;;
        *.js) timeout 60 node "$check" "$TARGET" ;;
        *.sh) timeout 60 "./$check" "$TARGET" ;;
    esac
    rc=$?
    RESULT[$check]=$rc
    [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
done
echo "===== summary"
for check in pika_workqueue.py pika_pubsub.py celery_check.py amqplib_check.js amqp_tools_check.sh; do
    if [ "${RESULT[$check]}" -eq 0 ]; then echo "PASS $check"; else echo "FAIL $check (exit ${RESULT[$check]})"; fi
done
[ $FAILED -eq 0 ]
