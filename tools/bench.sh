#!/usr/bin/env bash
# Runs the scenarios of BENCHMARKS.md against Warren and RabbitMQ, alternating the two,
# and prints a comparison table (median (min-max) per figure and the Warren/RabbitMQ ratio).
#
# Usage: tools/bench.sh [SCENARIO...]          (or: make bench SCEN="S1 S5" RUNS=3)
# Environment:
#   SCEN          scenarios to run (default: S1 S2 S3 S4 S4b S5 S6 S7 S8 S9 S10)
#   RUNS          runs per scenario and broker (default 3)
#   BROKERS       brokers to compare (default: "warren rabbitmq")
#   BENCH_SCALE   multiplies every message count and S6's duration (default 1)
#   BENCH_TIMEOUT safety cap per warren-bench run in seconds (default 300)
#   WARREN_BIN    broker binary (default build/warren)
#   BENCH_BIN     load generator (default build/warren-bench)
#   FLOOR_BIN     S6's latency floor without a broker (default build/relay-floor); run once
#                 per S6 run when it exists
#   WARREN_STORAGE 1 if Warren stores durable messages; default: guessed from storage/*.c
#
# Every broker is started fresh for every run of every scenario, on 127.0.0.1 and free
# ports, with its data in a temporary directory; RabbitMQ runs as the rabbitmq user under
# the node name wbench-PID@localhost and is stopped with rabbitmqctl, also on error or
# interrupt. Raw RESULT lines go to build/bench/results-STAMP.txt, the warren-bench
# output and broker logs to build/bench/log-STAMP.txt, the table to build/bench/table-STAMP.md.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SCEN=${SCEN:-}
[ $# -gt 0 ] && SCEN="$*"
[ -z "$SCEN" ] && SCEN="S1 S2 S3 S4 S4b S5 S6 S7 S8 S9 S10"
RUNS=${RUNS:-3}
BROKERS=${BROKERS:-"warren rabbitmq"}
SCALE=${BENCH_SCALE:-1}
TMO=${BENCH_TIMEOUT:-300}
WARREN=${WARREN_BIN:-build/warren}
BENCH=${BENCH_BIN:-build/warren-bench}
FLOOR=${FLOOR_BIN:-build/relay-floor}
PY=/usr/bin/python3

for s in $SCEN; do
  case $s in S1|S2|S3|S4|S4b|S5|S6|S7|S8|S9|S10) ;; *) echo "bench: unknown scenario $s" >&2; exit 2 ;; esac
done
for b in $BROKERS; do
  case $b in warren|rabbitmq) ;; *) echo "bench: unknown broker $b" >&2; exit 2 ;; esac
done
[ -x "$BENCH" ] || { echo "bench: $BENCH is missing (make build/warren-bench)" >&2; exit 1; }
[ -x "$WARREN" ] || { echo "bench: $WARREN is missing (make)" >&2; exit 1; }
if [[ " $BROKERS " == *" rabbitmq "* ]]; then
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] ||
    { echo "bench: rabbitmq-server is not installed (tools/install-deps.sh bench)" >&2; exit 1; }
  [ "$(id -u)" -eq 0 ] || { echo "bench: run as root to start RabbitMQ as the rabbitmq user" >&2; exit 1; }
fi
if [ -z "${WARREN_STORAGE:-}" ]; then
  WARREN_STORAGE=0
  compgen -G "storage/*.c" >/dev/null && WARREN_STORAGE=1
fi

mkdir -p build/bench
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=build/bench/results-$STAMP.txt
LOG=build/bench/log-$STAMP.txt
TABLE=build/bench/table-$STAMP.md
: > "$RESULTS"
: > "$LOG"
WORK=$(mktemp -d /tmp/warren-bench.XXXXXX)
chmod 755 "$WORK"
NODE="wbench-$$@localhost"

# Files of the rabbitmq user must be reachable by it: HOME has its Erlang cookie.
RENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq LANG=C.UTF-8 LC_ALL=C.UTF-8)

log() { echo "$*" | tee -a "$LOG" >&2; }

free_port() {
  $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

s6_duration() { # 10 s × BENCH_SCALE, within 2..10
  awk -v s="$SCALE" 'BEGIN { d = 10 * s; if (d < 2) d = 2; if (d > 10) d = 10; print d }'
}

scaled() { # scaled COUNT -> COUNT * BENCH_SCALE, at least 1000
  awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s + 0.5); if (v < 1000) v = 1000; print v }'
}

# ------------------------------------------------------------------ brokers
BPID=""      # broker process (Warren, or RabbitMQ's beam.smp)
BPORT=""
BKIND=""
WARREN_DATA="$WORK/warren-data"
RBASE="$WORK/rabbit"

# Waits until the broker on BPORT completes an AMQP handshake (at most $1 s).
wait_amqp() {
  local limit=$1 start=$SECONDS
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    if "$BENCH" --port "$BPORT" --connections 1 --hold 0 --timeout 5 --quiet >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

warren_launch() { # launches Warren on BPORT with WARREN_DATA; sets BPID
  "$WARREN" --port "$BPORT" --bind 127.0.0.1 --data "$WARREN_DATA" --log-level warn \
    >>"$WORK/warren.log" 2>&1 &
  BPID=$!
}

warren_start() {
  BKIND=warren
  BPORT=$(free_port)
  rm -rf "$WARREN_DATA"
  mkdir -p "$WARREN_DATA"
  warren_launch
  wait_amqp 20 || { log "bench: Warren did not start"; tail -20 "$WORK/warren.log" >>"$LOG"; return 1; }
}

warren_stop() {
  [ -n "$BPID" ] || return 0
  kill -TERM "$BPID" 2>/dev/null
  local i
  for i in $(seq 100); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$BPID" 2>/dev/null && { log "bench: Warren ignored SIGTERM; killing pid $BPID"; kill -KILL "$BPID" 2>/dev/null; }
  wait "$BPID" 2>/dev/null
  BPID=""
  if [ -s "$WORK/warren.log" ]; then # keep what Warren said in the log
    { echo "### Warren's log"; cat "$WORK/warren.log"; } >>"$LOG"
    : >"$WORK/warren.log"
  fi
}

rabbit_launch() { # launches RabbitMQ on BPORT with RBASE (kept as it is); sets BPID
  rm -f "$RBASE/pid"
  mkdir -p "$RBASE/mnesia" "$RBASE/log"
  : >"$RBASE/rabbitmq-env.conf"
  : >"$RBASE/rabbitmq.conf"
  echo '[].' >"$RBASE/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$RBASE"
  # Its systemd unit would raise the open-files limit (LimitNOFILE); PAM resets it to
  # 1024 for runuser, which caps RabbitMQ at ~830 sockets. Raise it to the hard limit.
  runuser -u rabbitmq -- "${RENV[@]}" \
    RABBITMQ_NODENAME="$NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$BPORT" \
    RABBITMQ_DIST_PORT="$RDIST" RABBITMQ_MNESIA_BASE="$RBASE/mnesia" RABBITMQ_LOG_BASE="$RBASE/log" \
    RABBITMQ_PID_FILE="$RBASE/pid" RABBITMQ_ENABLED_PLUGINS_FILE="$RBASE/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$RBASE/rabbitmq.conf" RABBITMQ_CONF_ENV_FILE="$RBASE/rabbitmq-env.conf" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
    sh -c 'ulimit -n "$(ulimit -Hn)"; exec /usr/lib/rabbitmq/bin/rabbitmq-server' \
    >>"$RBASE/stdout.log" 2>&1 &
  RLAUNCHER=$!
  local i
  BPID=""
  for i in $(seq 300); do
    if [ -s "$RBASE/pid" ]; then BPID=$(cat "$RBASE/pid"); break; fi
    kill -0 "$RLAUNCHER" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$BPID" ]
}

rabbit_start() {
  BKIND=rabbitmq
  BPORT=$(free_port)
  RDIST=$(free_port)
  rm -rf "$RBASE"
  rabbit_launch || { log "bench: RabbitMQ did not start"; tail -30 "$RBASE/stdout.log" >>"$LOG" 2>/dev/null; return 1; }
  if ! timeout 120 runuser -u rabbitmq -- "${RENV[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl -n "$NODE" \
      wait "$RBASE/pid" --timeout 90 >>"$LOG" 2>&1 || ! wait_amqp 30; then
    log "bench: RabbitMQ did not become ready"
    return 1
  fi
}

rabbit_stop() {
  [ -n "$BPID" ] || return 0
  timeout 60 runuser -u rabbitmq -- "${RENV[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl -n "$NODE" \
    stop "$RBASE/pid" >>"$LOG" 2>&1
  local i
  for i in $(seq 100); do kill -0 "$BPID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$BPID" 2>/dev/null; then
    log "bench: RabbitMQ did not stop; killing beam pid $BPID"
    kill -KILL "$BPID" 2>/dev/null
  fi
  [ -n "${RLAUNCHER:-}" ] && wait "$RLAUNCHER" 2>/dev/null
  BPID=""
}

broker_start() { if [ "$1" = warren ]; then warren_start; else rabbit_start; fi; }
broker_stop() { if [ "$BKIND" = warren ]; then warren_stop; else rabbit_stop; fi; }

BENCH_CHILD=""
cleanup() {
  trap - EXIT INT TERM
  if [ -n "$BENCH_CHILD" ]; then # warren-bench reports and exits on SIGTERM
    kill -TERM "$BENCH_CHILD" 2>/dev/null
    wait "$BENCH_CHILD" 2>/dev/null
  fi
  broker_stop
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "bench: interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------ runs
LAST=""
# bench_run BROKER SCEN RUN ARGS... : one warren-bench run; appends its RESULT line
# (with run=) to RESULTS and leaves it in LAST.
bench_run() {
  local b=$1 s=$2 r=$3
  shift 3
  local out rc
  echo "### $s $b run $r: warren-bench $*" >>"$LOG"
  # In the background with `wait`, so that a signal to this script is handled at once.
  timeout --kill-after=10 $((TMO + 60)) "$BENCH" --host 127.0.0.1 --port "$BPORT" \
    --broker "$b" --scenario "$s" --timeout "$TMO" "$@" >"$WORK/bench.out" 2>>"$LOG" &
  BENCH_CHILD=$!
  wait "$BENCH_CHILD"
  rc=$?
  BENCH_CHILD=""
  out=$(cat "$WORK/bench.out")
  echo "$out" >>"$LOG"
  LAST=$(grep '^RESULT ' <<<"$out" | tail -1)
  [ -n "$LAST" ] || LAST="RESULT scenario=$s broker=$b status=fail errors=1 note=no_result"
  LAST="$LAST run=$r rc=$rc"
  echo "$LAST" >>"$RESULTS"
}

field() { # field KEY LINE
  local kv
  for kv in $2; do [ "${kv%%=*}" = "$1" ] && { echo "${kv#*=}"; return; }; done
  echo "-"
}

summary() { # one line per run on the terminal
  local l=$1
  if [ "$(field mode "$l")" = idle ]; then
    printf '  %-4s %-8s run %s: %s connections open in %s s, RSS %s KiB before, %s KiB per connection  %s\n' \
      "$(field scenario "$l")" "$(field broker "$l")" "$(field run "$l")" "$(field opened "$l")" \
      "$(field open_s "$l")" "$(field rss_before_kb "$l")" "$(field rss_per_conn_kb "$l")" "$(field status "$l")" >&2
    return
  fi
  printf '  %-4s %-8s run %s: pub %s/s  con %s/s  p50 %s us  p99 %s us  lost %s  dup %s  cpu/M %s s  rss %s KiB  %s\n' \
    "$(field scenario "$l")" "$(field broker "$l")" "$(field run "$l")" "$(field pub_rate "$l")" \
    "$(field con_rate "$l")" "$(field p50_us "$l")" "$(field p99_us "$l")" "$(field lost "$l")" \
    "$(field dup "$l")" "$(field cpu_s_per_M "$l")" "$(field broker_peak_rss_kb "$l")" "$(field status "$l")" >&2
}

proc_cpu() { # utime+stime of PID in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); split($0, f, " "); printf "%.3f\n", (f[12] + f[13]) / hz }' \
    "/proc/$1/stat" 2>/dev/null || echo -1
}
proc_hwm() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo -1; }

# Scenario S8: backlog of persistent messages, broker restart, drain.
run_s8() {
  local b=$1 r=$2 n prefix pub drain t0 t1 t2 stop_s cpu2 hwm2 restart_s
  n=$(scaled 1000000)
  prefix="wbench-s8-$$-$r"
  bench_run "$b" S8-publish "$r" --broker-pid "$BPID" --queue-prefix "$prefix" --count "$n" \
    --size 1024 --persistent --confirm 1000 --phase publish
  pub=$LAST
  t0=$(date +%s.%N)
  broker_stop
  stop_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  # Restart on the same port and data; warren-bench starts with the broker and waits for it.
  t1=$(date +%s.%N)
  if [ "$b" = warren ]; then BKIND=warren; warren_launch; else BKIND=rabbitmq; rabbit_launch; fi
  t2=$(date +%s.%N)
  bench_run "$b" S8-drain "$r" --queue-prefix "$prefix" --count "$n" --persistent --phase consume \
    --prefetch 1000 --ack 100 --connect-retry 120
  drain=$LAST
  # first_delivery_s counts from warren-bench's start; add the time since the launch.
  restart_s=$(awk -v a="$t1" -v b="$t2" -v f="$(field first_delivery_s "$drain")" \
    'BEGIN { if (f == "-" || f < 0) print -1; else printf "%.3f", f + (b - a) }')
  cpu2=-1; hwm2=-1
  if [ -n "$BPID" ] && [ -e "/proc/$BPID" ]; then cpu2=$(proc_cpu "$BPID"); hwm2=$(proc_hwm "$BPID"); fi
  local line
  line="RESULT scenario=S8 broker=$b pub_rate=$(field pub_rate "$pub") backlog_rss_kb=$(field broker_peak_rss_kb "$pub")"
  line+=" stop_s=$stop_s restart_s=$restart_s drain_rate=$(field con_rate "$drain")"
  line+=" lost=$(field lost "$drain") dup=$(field dup "$drain") sent=$(field sent "$pub") received=$(field received "$drain")"
  line+=" cpu_s_per_M=$(field cpu_s_per_M "$pub") restart_cpu_s=$cpu2 restart_hwm_kb=$hwm2"
  local st=ok
  [ "$(field status "$pub")" = ok ] && [ "$(field status "$drain")" = ok ] || st=fail
  line+=" status=$st run=$r"
  echo "$line" >>"$RESULTS"
  printf '  S8   %-8s run %s: publish %s/s  backlog RSS %s KiB  restart->first delivery %s s  drain %s/s  lost %s  %s\n' \
    "$b" "$r" "$(field pub_rate "$pub")" "$(field broker_peak_rss_kb "$pub")" "$restart_s" \
    "$(field con_rate "$drain")" "$(field lost "$drain")" "$st" >&2
}

run_scenario() { # run_scenario SCEN BROKER RUN
  local s=$1 b=$2 r=$3
  local common=(--broker-pid "$BPID")
  case $s in
    S1) bench_run "$b" S1 "$r" "${common[@]}" --count "$(scaled 500000)" --size 16 ;;
    S2) bench_run "$b" S2 "$r" "${common[@]}" --count "$(scaled 300000)" --size 1024 --prefetch 1000 --ack 100 ;;
    S3) bench_run "$b" S3 "$r" "${common[@]}" --count "$(scaled 200000)" --size 1024 --persistent \
          --confirm 1000 --prefetch 1000 --ack 100 ;;
    S4) bench_run "$b" S4 "$r" "${common[@]}" --count "$(scaled 20000)" --size 1024 --persistent \
          --confirm 1 --prefetch 1000 --ack 100 ;;
    S4b) bench_run "$b" S4b "$r" "${common[@]}" --count "$(scaled 20000)" --size 1024 --persistent \
          --confirm 1 --prefetch 1000 --ack 100 --consume-after ;;
    S5) bench_run "$b" S5 "$r" "${common[@]}" --count "$(scaled 100000)" --size 256 --fanout --queues 10 ;;
    S6) bench_run "$b" S6 "$r" "${common[@]}" --rate 1000 --duration "$(s6_duration)" \
          --size 256 --ack 1 ;;
    S7) bench_run "$b" S7 "$r" "${common[@]}" --count "$(scaled 800000)" --size 256 --producers 4 \
          --consumers 4 --queues 4 ;;
    S8) run_s8 "$b" "$r"; return ;;
    S9) bench_run "$b" S9 "$r" "${common[@]}" --connections 1000 --hold 3 ;;
    S10) bench_run "$b" S10 "$r" "${common[@]}" --count "$(scaled 100000)" --size 256 --dead-letter-ttl 0 ;;
  esac
  summary "$LAST"
}

run_floor() { # run_floor RUN: the same paced path through a bare relay process, no broker
  local r=$1 out
  [ -x "$FLOOR" ] || return 0
  out=$(timeout --kill-after=10 60 "$FLOOR" --rate 1000 --duration "$(s6_duration)" --size 256 \
        --scenario S6 2>>"$LOG")
  echo "$out" >>"$LOG"
  LAST=$(grep '^RESULT ' <<<"$out" | tail -1)
  [ -n "$LAST" ] || LAST="RESULT scenario=S6 broker=floor status=fail errors=1 note=no_result"
  echo "$LAST run=$r" >>"$RESULTS"
  printf '  S6   %-8s run %s: latency p50 %s us  p99 %s us  %s\n' floor "$r" "$(field p50_us "$LAST")" \
    "$(field p99_us "$LAST")" "$(field status "$LAST")" >&2
}

{
  echo "# warren bench $STAMP"
  echo "# machine: $(nproc) CPU(s), $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)," \
       "$(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
  echo "# warren: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- . 2>/dev/null || echo '+changes')," \
       "rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null)," \
       "librabbitmq $(dpkg-query -W -f='${Version}' librabbitmq4 2>/dev/null)"
  echo "# scenarios: $SCEN; runs: $RUNS; scale: $SCALE; brokers: $BROKERS"
} | tee -a "$RESULTS" >&2

start_all=$SECONDS
for s in $SCEN; do
  log "== $s"
  for r in $(seq "$RUNS"); do
    for b in $BROKERS; do
      if ! broker_start "$b"; then
        echo "RESULT scenario=$s broker=$b status=fail errors=1 note=broker_start run=$r" >>"$RESULTS"
        broker_stop
        continue
      fi
      run_scenario "$s" "$b" "$r"
      broker_stop
    done
    [ "$s" = S6 ] && run_floor "$r"
  done
done
log "bench: all runs took $((SECONDS - start_all)) s"

flags=()
[ "$WARREN_STORAGE" = 1 ] || flags+=(--no-storage)
{
  grep '^# ' "$RESULTS" | sed 's/^# //'
  echo
  $PY tools/bench/report.py "$RESULTS" "${flags[@]}"
} >"$TABLE"
echo
cat "$TABLE"
echo
echo "raw RESULT lines: $RESULTS"
echo "log (warren-bench output, broker messages): $LOG"
echo "table: $TABLE"
