# Process bookkeeping shared by deploy/demo.sh and bench/run.sh (sourced).
# Every daemon started with start_daemon is stopped by stop_all, on every exit
# path of the caller (which calls stop_all from its EXIT trap).
#
# The caller provides: LOGS (directory for NAME.log files) and die().

PIDS=()
NAMES=()
LAST_PID=""
STOP_FAILURES=""

# start_daemon NAME PROGRAM ARGS...: runs it in the background, output to
# $LOGS/NAME.log, stdin from /dev/null; its pid is in LAST_PID.
start_daemon() {
  local name=$1
  shift
  "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  NAMES+=("$name")
}

# stop_all [GRACE_SECONDS]: SIGTERM to every daemon, newest first (mirrors
# before their broker), up to GRACE (default 10) seconds to exit, then
# SIGKILL. Sets STOP_FAILURES to " NAME(killed)" / " NAME(exit N)" entries.
stop_all() {
  local grace=${1:-10} i pid alive deadline rc
  STOP_FAILURES=""
  ((${#PIDS[@]} > 0)) || return 0
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || true
  done
  deadline=$((SECONDS + grace))
  while ((SECONDS < deadline)); do
    alive=0
    for pid in "${PIDS[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then
        alive=1
        break
      fi
    done
    ((alive)) || break
    sleep 0.1
  done
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[i]}
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      STOP_FAILURES+=" ${NAMES[i]}(killed)"
    fi
    if wait "$pid" 2>/dev/null; then rc=0; else rc=$?; fi
    if ((rc != 0)) && [[ $STOP_FAILURES != *" ${NAMES[i]}("* ]]; then
      STOP_FAILURES+=" ${NAMES[i]}(exit $rc)"
    fi
  done
  PIDS=()
  NAMES=()
}

# kill_daemon NAME: SIGKILL (a crash, for a demo or test), reaped and no
# longer tracked.
kill_daemon() {
  local i keep_pids=() keep_names=()
  for i in "${!PIDS[@]}"; do
    if [[ ${NAMES[i]} == "$1" ]]; then
      kill -KILL "${PIDS[i]}" 2>/dev/null || true
      wait "${PIDS[i]}" 2>/dev/null || true
    else
      keep_pids+=("${PIDS[i]}")
      keep_names+=("${NAMES[i]}")
    fi
  done
  PIDS=("${keep_pids[@]}")
  NAMES=("${keep_names[@]}")
}

# check_alive: dies if any daemon has exited.
check_alive() {
  local i
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
      die "${NAMES[i]} exited unexpectedly (log: $LOGS/${NAMES[i]}.log)"
    fi
  done
}

# now: seconds since the epoch with microseconds.
now() { printf '%s' "$EPOCHREALTIME"; }
