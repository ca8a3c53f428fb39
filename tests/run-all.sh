#!/usr/bin/env bash
# Runs every test suite: C unit tests, then the broker tests (pika, raw sockets, rabbitmq-c,
# amqp-tools) against build/warren and again against the ASan/UBSan build.
# Prints one line per suite and a closing "N passed, N failed" line; exits non-zero on any failure.
set -u
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
passed=0
failed=0
failures=()

run_suite() {
  local name=$1; shift
  echo "==== $name"
  local start=$SECONDS
  if "$@"; then
    passed=$((passed + 1)); echo "==== $name: ok ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "==== $name: FAILED ($((SECONDS - start)) s)"
  fi
}

for t in build/tests/test_*; do
  [ -x "$t" ] && run_suite "unit $(basename "$t")" "$t"
done

export WARREN_INTEROP_DIR=build/interop
run_suite "broker tests (build/warren)" env WARREN_BIN=build/warren \
  $PY -m pytest -q -p no:cacheprovider -m "not crash" tests/broker
# The SIGKILL crash rounds print each round's counts (-s shows them).
run_suite "crash tests (build/warren)" env WARREN_BIN=build/warren \
  $PY -m pytest -q -s -p no:cacheprovider -m crash tests/broker
run_suite "broker tests (ASan/UBSan build/asan/warren)" env WARREN_BIN=build/asan/warren \
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
  $PY -m pytest -q -p no:cacheprovider tests/broker

# Functional smoke run of the load generator: lost=0 and dup=0 only, no timing checks.
run_suite "warren-bench smoke (build/warren)" tools/bench/smoke.sh build/warren build/warren-bench

echo
[ ${#failures[@]} -gt 0 ] && printf 'failed suite: %s\n' "${failures[@]}"
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
