#!/usr/bin/env bash
# mirrorcast relay benchmark (issue 9): one origin, R relays, M mirrors per
# relay, against the same M x R mirrors fed directly by the origin, and against
# an rsync hub-and-spoke (relays pull from the origin, mirrors pull from their
# relay, as Debian's staged push mirroring does). Per tree size, for one
# realistic update, three figures:
#   origin egress bytes   what the origin's sockets sent for the update
#   time                  publish (or first pull) start -> every mirror applied
#   origin CPU seconds    the origin broker's (or origin rsync daemon's) CPU
#
#   bash bench/relay.sh BUILD_DIR          (also: bash bench/run.sh BUILD_DIR relay)
#
# Environment:
#   BENCH_SCALE=small           2k and 10k files (about 2 minutes)
#   BENCH_SCALE=full            10k and 100k files (default; about 10 minutes)
#   BENCH_RELAY_SIZES="5000 20000"  any sizes instead (ascending)
#   BENCH_RELAYS=R              relays (default 2)
#   BENCH_MIRRORS_PER_RELAY=M   mirrors per relay (default 3); the direct and
#                               rsync set-ups have the same M x R mirrors
#   BENCH_RELAY_ROUNDS=N        updates per set-up and size (default 3); the
#                               table shows the median of each figure
#   BENCH_DIR=DIR, BENCH_KEEP=1 as for bench/run.sh
#
# The tree: packages of 512 B-128 KiB (log-uniform, 23 KiB on average) under
# Packages/<a..z>/ and repodata/ (mirrorcast-bench-gen tree). The update: 1%
# of the files (0.6% rewritten, 0.3% added, 0.1% deleted) and regenerated
# repodata/ (mirrorcast-bench-gen update). Every tree of a set-up (origin,
# relays, mirrors) starts as a copy of one generated tree, so every mirror is
# bootstrapped and idle before the update: hard-linked (cp -al; the
# generator, mirrorcast and rsync all replace files by rename, never in
# place), except the mirrorcast relays' trees, which are real copies (see
# run_mirrorcast).
#
# How each figure is measured:
#   - mirrorcast egress: the kernel's per-socket counters (`ss -tinH`,
#     bytes_acked: TCP payload the peer acknowledged) of every established
#     socket whose local port is one of the origin broker's three ports
#     (control, events, content, read from its "serving control=... events=N
#     content=N" log line), read once the mirrors are idle and again after
#     the last mirror applied (plus 1 s for the ACKs), subtracted per socket
#     (a socket opened in between counts whole). A socket that closes in
#     between loses its counts: the publisher's own connection does (the
#     origin's replies to it, the same in both mirrorcast set-ups); mirrors'
#     and relays' connections are long-lived, and the script reports how many
#     sockets vanished.
#   - rsync egress: the sum of "Total bytes received" that each relay's
#     rsync client prints (--stats) for its pull from the origin daemon: what
#     the origin daemon sent, as rsync counts it (its own protocol bytes, no
#     TCP/IP headers, like bytes_acked).
#   - time: from just before mirrorcast-publish starts (full scan of the
#     tree) to the latest "applied repo=R serial=N" line among the M x R
#     mirrors' logs (their own timestamps; the logs are polled every 50 ms).
#     For rsync: from just before the first pull to the end of the last one.
#     Each relay's chain runs on its own, as a staged push does: relay i
#     pulls from the origin, and as soon as it is done its M mirrors pull from
#     relay i's daemon in parallel; the R chains run in parallel.
#   - origin CPU: utime+stime of the origin broker from /proc/PID/stat over
#     the same window (publish handling included; the publisher's own CPU is
#     not counted, it is the same in every mirrorcast set-up). For rsync:
#     utime+stime+cutime+cstime of the origin `rsync --daemon --no-detach`,
#     after every per-connection child it forked has been reaped (their CPU
#     is then in cutime/cstime).
# The relays' own CPU and egress are not origin costs; the relays' egress is
# printed as an information line.
#
# Everything runs on 127.0.0.1 with --insecure-plaintext (like every figure
# in docs/benchmarks.md), ports chosen by the kernel (--listen 127.0.0.1:0,
# --port-file). Every process started is stopped and the work directory
# removed on every exit path (unless BENCH_KEEP=1); every wait is bounded.
# Results: stdout and BUILD_DIR/bench-relay-results.txt. A set-up that does
# not work is recorded as FAILED with its first error line, the others still
# run, and the script exits 1 after the table.
set -euo pipefail

BUILD_DIR=${1:-build}
SCALE=${BENCH_SCALE:-full}
case $SCALE in
  small) SIZES="2000 10000" ;;
  full) SIZES="10000 100000" ;;
  *)
    echo "BENCH_SCALE must be small or full" >&2
    exit 2
    ;;
esac
SIZES=${BENCH_RELAY_SIZES:-$SIZES}
R=${BENCH_RELAYS:-2}
M=${BENCH_MIRRORS_PER_RELAY:-3}
ROUNDS=${BENCH_RELAY_ROUNDS:-3}
MIN_BYTES=512 MAX_BYTES=131072
REPO=relay
CLK_TCK=$(getconf CLK_TCK)

say() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

[[ $R =~ ^[1-9][0-9]*$ && $M =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] ||
  die "BENCH_RELAYS, BENCH_MIRRORS_PER_RELAY and BENCH_RELAY_ROUNDS must be positive integers"
[[ -d $BUILD_DIR/bin ]] || die "no $BUILD_DIR/bin: build first (make build)"
BIN=$(cd "$BUILD_DIR/bin" && pwd)
for prog in mirrorcast mirrorcast-broker mirrorcast-publish mirrorcast-subscriber \
  mirrorcast-bench-gen; do
  [[ -x $BIN/$prog ]] || die "$BIN/$prog is missing: build first (make build)"
done
GEN=$BIN/mirrorcast-bench-gen
TRANSPORT=--insecure-plaintext
RSYNC=$(command -v rsync) || die "rsync is not installed (apt-get install rsync)"
command -v ss >/dev/null || die "ss is not installed (apt-get install iproute2)"
RESULTS_FILE=$(cd "$BUILD_DIR" && pwd)/bench-relay-results.txt
prev=0
for n in $SIZES; do
  [[ $n =~ ^[0-9]+$ ]] && ((n >= 500)) || die "bad size '$n' (at least 500 files)"
  ((n > prev)) || die "sizes must ascend: $SIZES"
  prev=$n
done

D=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/mirrorcast-relay.XXXXXX")
LOGS=$D/logs
mkdir -p "$LOGS"
ulimit -n 65536 2>/dev/null || true

# shellcheck source=../deploy/lib/daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/lib/daemons.sh"

# V[size.key]: a measured number; F[size.key]: "FAILED: why".
declare -A V F
ANY_FAILED=0
TABLE_PRINTED=0
START=$SECONDS
JOBS=() # background jobs of this script (rsync pulls), stopped by the trap

cleanup() {
  local rc=$? j
  trap - EXIT INT TERM
  # A chain is a subshell running `timeout rsync`: stop the timeouts (each
  # passes the signal to its rsync), then the subshell.
  for j in "${JOBS[@]}"; do
    # shellcheck disable=SC2046 # one pid a word
    kill -TERM $(ps -o pid= --ppid "$j" 2>/dev/null) "$j" 2>/dev/null || true
  done
  for j in "${JOBS[@]}"; do wait "$j" 2>/dev/null || true; done
  stop_all 15 || true
  [[ -z $STOP_FAILURES ]] || echo "stopped by force or failed:$STOP_FAILURES"
  if ((!TABLE_PRINTED)); then
    echo "(exiting early, status $rc: the table holds what was measured so far)"
    report || true
    if ((rc != 0)); then
      echo "---- last lines of the logs ($LOGS) ----"
      local f
      for f in $(ls -t "$LOGS"/*.log 2>/dev/null | head -n 4); do
        echo "-- ${f##*/}"
        tail -n 6 "$f" | cut -c1-300 | sed 's/^/   /'
      done
    fi
  fi
  if [[ -n ${BENCH_KEEP:-} ]]; then echo "(kept $D)"; else rm -rf "$D"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Arithmetic, /proc, logs, sockets
# ---------------------------------------------------------------------------
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }
median() { tr ' ' '\n' | { grep . || true; } | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
short() {
  if (($1 >= 1000000 && $1 % 1000000 == 0)); then echo "$(($1 / 1000000))M"
  elif (($1 >= 1000 && $1 % 1000 == 0)); then echo "$(($1 / 1000))k"
  else echo "$1"; fi
}
human_bytes() { awk -v b="$1" 'BEGIN { if (b >= 1048576) printf "%.1f MiB", b / 1048576
  else if (b >= 1024) printf "%.1f KiB", b / 1024; else printf "%d B", b }'; }
# utime+stime (+cutime+cstime with "all") of a live process, in seconds.
proc_cpu() { # PID [all]
  awk -v hz="$CLK_TCK" -v all="${2:-}" '{ sub(/^.*\) /, "")
    printf "%.2f\n", ($12 + $13 + (all == "all" ? $14 + $15 : 0)) / hz }' "/proc/$1/stat" 2>/dev/null ||
    echo 0
}
# A log timestamp (2026-01-02T03:04:05.123456, optionally with Z) -> epoch.
log_epoch() {
  [[ $1 =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z?$ ]] || return 1
  date -d "$1" +%s.%N
}
first_error() { # FILE
  local line
  line=$(grep -m 1 -i -E 'error|fail|refus|cannot|timed out' "$1" 2>/dev/null || true)
  [[ -n $line ]] || line=$(tail -n 1 "$1" 2>/dev/null || true)
  printf '%s' "${line:-no output}" | cut -c1-300
}
# The three ports of a broker, from its "serving control=H:P events=N
# content=N" log line.
broker_ports() { # LOG
  sed -n -E 's/.* serving control=[^ ]*:([0-9]+) events=([0-9]+) content=([0-9]+) .*/\1 \2 \3/p' "$1" |
    tail -n 1
}
# One line "LOCAL>PEER BYTES_ACKED" per established TCP socket whose local
# port is one of PORTS.
sock_counters() { # PORTS...
  local filter="" p
  for p in "$@"; do filter+="${filter:+ or }sport = :$p"; done
  ss -tinH state established "( $filter )" | awk '
    { for (i = 1; i <= NF; i++) {
        if ($i ~ /^[0-9.\[\]:a-f]+:[0-9]+$/ && $(i + 1) ~ /^[0-9.\[\]:a-f]+:[0-9]+$/) {
          if (key != "") print key, acked
          key = $i ">" $(i + 1); acked = 0; i++ }
        else if ($i ~ /^bytes_acked:/) { sub(/^bytes_acked:/, "", $i); acked = $i } } }
    END { if (key != "") print key, acked }'
}
# Bytes sent between two sock_counters readings; SOCK_GONE: sockets of the
# first reading missing from the second, SOCK_NEW: sockets only in the second.
sock_delta() { # BEFORE_FILE AFTER_FILE
  local out
  out=$(awk 'NR == FNR { before[$1] = $2; next }
    { seen[$1] = 1; d += $2 - (($1 in before) ? before[$1] : 0); if (!($1 in before)) fresh++ }
    END { for (k in before) if (!(k in seen)) gone++
          printf "%d %d %d\n", d, gone + 0, fresh + 0 }' "$1" "$2")
  read -r SOCK_BYTES SOCK_GONE SOCK_NEW <<<"$out"
}

tree_listing() {
  (cd "$1" && timeout 600 find . \( -name .mirrorcast-staging -prune \) -o \
    \( -type d -printf '%P d\n' \) -o -printf '%P %y %s\n' | LC_ALL=C sort | md5sum | cut -d' ' -f1)
}

# ---------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------
# start_broker NAME TREE_ROOT [--upstream ADDR]: sets ADDR_OF[NAME], PID_OF[NAME], PORTS_OF[NAME]
declare -A ADDR_OF PID_OF PORTS_OF
start_broker() {
  local name=$1 root=$2 deadline
  shift 2
  start_daemon "$name" "$BIN/mirrorcast-broker" --listen 127.0.0.1:0 --port-file "$D/$name.port" \
    --state "$D/$name-state" --tree-root "$root" --trust "$D/origin.pub" --broker-id "$name" \
    $TRANSPORT "$@"
  PID_OF[$name]=$LAST_PID
  deadline=$((SECONDS + 30))
  while [[ ! -s $D/$name.port || -z $(broker_ports "$LOGS/$name.log") ]]; do
    kill -0 "$LAST_PID" 2>/dev/null || { SETUP_ERROR="$name exited: $(first_error "$LOGS/$name.log")"; return 1; }
    ((SECONDS < deadline)) || { SETUP_ERROR="$name wrote no --port-file within 30 s"; return 1; }
    sleep 0.05
  done
  ADDR_OF[$name]=$(tr -d '[:space:]' <"$D/$name.port")
  PORTS_OF[$name]=$(broker_ports "$LOGS/$name.log")
}

start_subscriber() { # NAME BROKER_ADDR TREE
  start_daemon "$1" "$BIN/mirrorcast-subscriber" --broker "$2" --trust "$D/origin.pub" \
    --repo "$REPO" --tree "$3" --state "$D/$1-state" --id "$1" --no-trace-files --delete-delay 0 \
    $TRANSPORT
  PID_OF[$1]=$LAST_PID
}

# Publishes the tree; PUB_OUT, and 0 only if serial EXPECT was published.
publish() { # ORIGIN_NAME TREE STATE EXPECT
  local err=$D/publish.err rc=0
  timeout -k 10 600 "$BIN/mirrorcast-publish" --broker "${ADDR_OF[$1]}" --key "$D/origin.key" \
    --repo "$REPO" --tree "$2" --state "$3" $TRANSPORT >"$D/publish.out" 2>"$err" || rc=$?
  cat "$err" "$D/publish.out" >>"$LOGS/publish.log"
  PUB_OUT=$(tr '\n' ' ' <"$D/publish.out")
  if ((rc != 0)); then
    SETUP_ERROR="mirrorcast-publish exit $rc: $(first_error "$err")"
    return 1
  fi
  grep -q "published repo=$REPO serial=$4 " "$D/publish.out" || {
    SETUP_ERROR="expected a publish of serial $4, got: ${PUB_OUT:0:300}"
    return 1
  }
}

# Waits until every named process logged "applied repo=REPO serial=SERIAL";
# polls every 50 ms. APPLIED_LAST / APPLIED_FIRST: epoch of the latest and
# earliest such line (the programs' own timestamps).
wait_applied() { # SERIAL BOUND_SECONDS NAME...
  local serial=$1 deadline=$((SECONDS + $2)) name missing line ts
  shift 2
  while :; do
    missing=""
    for name in "$@"; do
      grep -q -E "applied repo=$REPO serial=$serial " "$LOGS/$name.log" 2>/dev/null || missing+=" $name"
    done
    [[ -n $missing ]] || break
    for name in $missing; do
      kill -0 "${PID_OF[$name]}" 2>/dev/null ||
        { SETUP_ERROR="$name exited: $(first_error "$LOGS/$name.log")"; return 1; }
    done
    if ((SECONDS >= deadline)); then
      name=${missing# }
      name=${name%% *}
      SETUP_ERROR="serial $serial not applied within $2 s by:$missing; last line of $name: $(tail -n 1 "$LOGS/$name.log" | cut -c1-250)"
      return 1
    fi
    sleep 0.05
  done
  APPLIED_LAST=0 APPLIED_FIRST=""
  for name in "$@"; do
    line=$(grep -m 1 -E "applied repo=$REPO serial=$serial " "$LOGS/$name.log")
    ts=$(log_epoch "${line%% *}") || { SETUP_ERROR="unreadable timestamp in $name.log: ${line:0:80}"; return 1; }
    APPLIED_LAST=$(awk -v a="$APPLIED_LAST" -v b="$ts" 'BEGIN { printf "%.6f", (b > a ? b : a) }')
    [[ -n $APPLIED_FIRST ]] && APPLIED_FIRST=$(awk -v a="$APPLIED_FIRST" -v b="$ts" 'BEGIN { printf "%.6f", (b < a ? b : a) }') ||
      APPLIED_FIRST=$ts
  done
}

# rsync daemon serving PATH as module "tree"; sets RSYNCD_URL, RSYNCD_PID.
start_rsyncd() { # NAME PATH
  local name=$1 path=$2 port conf=$D/$1.conf attempt deadline
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$((20000 + (RANDOM * 7 + attempt) % 40000))
    if ss -ltnH "sport = :$port" | grep -q .; then continue; fi
    cat >"$conf" <<EOF
use chroot = no
uid = root
gid = root
address = 127.0.0.1
max connections = 0
log file = $LOGS/$name-transfers.log
[tree]
  path = $path
  read only = yes
EOF
    start_daemon "$name" "$RSYNC" --daemon --no-detach --config="$conf" --address=127.0.0.1 \
      --port="$port"
    RSYNCD_PID=$LAST_PID
    deadline=$((SECONDS + 10))
    while kill -0 "$RSYNCD_PID" 2>/dev/null && ((SECONDS < deadline)); do
      if ss -ltnH "sport = :$port" | grep -q .; then
        RSYNCD_URL=rsync://127.0.0.1:$port/tree/
        return 0
      fi
      sleep 0.05
    done
    kill -TERM "$RSYNCD_PID" 2>/dev/null || true
    wait "$RSYNCD_PID" 2>/dev/null || true
    unset 'PIDS[-1]' 'NAMES[-1]'
  done
  die "could not start an rsync daemon on 127.0.0.1 (log: $LOGS/$name.log)"
}
# Waits (up to 10 s) until PID has no children left: the rsync daemon has
# reaped its per-connection children and holds their CPU in cutime/cstime.
wait_reaped() { # PID
  local deadline=$((SECONDS + 10))
  while [[ -n $(ps -o pid= --ppid "$1" 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 0.05; done
  sleep 0.1
}
rs_received() { # STATS_FILE: the client's "Total bytes received"
  awk '/^Total bytes received:/ { gsub(/,/, "", $4); n += $4 } END { printf "%d\n", n }' "$1"
}

# Names of the M x R leaf mirrors and the R relays.
mirror_names() { local i j; for ((i = 1; i <= R; i++)); do for ((j = 1; j <= M; j++)); do echo "m$i-$j"; done; done; }
MIRRORS=() RELAYS=()
for ((i = 1; i <= R; i++)); do
  RELAYS+=("relay-$i")
done
mapfile -t MIRRORS < <(mirror_names)

# ---------------------------------------------------------------------------
# The three set-ups. Each sets V[n.KIND_egress|_time|_cpu] or F[...].
# ---------------------------------------------------------------------------
fail_setup() { # N KIND MESSAGE
  local k
  for k in egress time cpu; do F[$1.$2_$k]="FAILED: ${3:0:400}"; done
  ANY_FAILED=1
  info "FAILED ($(short "$1") files, $2): $3"
}

# Applies the benchmark's update to TREE (the same seed: the same update).
update_tree() { # N TREE ROUND
  local n=$1 pk
  pk=$((n - 2))
  "$GEN" update "$2" --modify $((pk * 6 / 1000)) --add $((pk * 3 / 1000)) --delete $((pk / 1000)) \
    --min "$MIN_BYTES" --max "$MAX_BYTES" --seed $((91 + $3)) >>"$LOGS/gen.log" 2>&1 ||
    die "mirrorcast-bench-gen update failed (log: $LOGS/gen.log)"
}

# mirrorcast, with relays (KIND=relay) or every mirror on the origin (direct).
run_mirrorcast() { # N KIND
  local n=$1 kind=$2 w=$D/n$1-$2 i j name serial1_bound update_bound
  local origin_tree cpu0 cpu1 t0
  serial1_bound=$((120 + n / 500))
  update_bound=$((120 + n / 1000))
  origin_tree=$w/origin/$REPO
  mkdir -p "$w/origin"
  cp -al "$BASE" "$origin_tree"
  # A relay's tree is a real copy: a relay keeps replaced file versions as
  # hard links in its state directory, and a new link changes the inode's
  # ctime, which is part of the publisher's hash-cache key: relays sharing
  # the origin's inodes would make the origin's publisher hash every file
  # again (mirrors keep no such links).
  if [[ $kind == relay ]]; then
    for name in "${RELAYS[@]}"; do mkdir -p "$w/$name"; cp -a "$BASE" "$w/$name/$REPO"; done
  fi
  for name in "${MIRRORS[@]}"; do cp -al "$BASE" "$w/$name"; done

  SETUP_ERROR=""
  start_broker "origin-$n-$kind" "$w/origin" || { fail_setup "$n" "$kind" "$SETUP_ERROR"; stop_all 15; return 0; }
  local origin=origin-$n-$kind
  publish "$origin" "$origin_tree" "$w/pub-state" 1 ||
    { fail_setup "$n" "$kind" "first publish: $SETUP_ERROR"; stop_all 15; return 0; }
  local names=() relay_names=()
  if [[ $kind == relay ]]; then
    for ((i = 1; i <= R; i++)); do
      name=relay-$i-$n
      start_broker "$name" "$w/relay-$i" --upstream "${ADDR_OF[$origin]}" ||
        { fail_setup "$n" "$kind" "$SETUP_ERROR"; stop_all 15; return 0; }
      relay_names+=("$name")
    done
    # A relay logs "applied" when its tree holds the serial, then "relayed"
    # once it serves it; its mirrors subscribe after that.
    wait_applied 1 "$serial1_bound" "${relay_names[@]}" ||
      { fail_setup "$n" "$kind" "relays, serial 1: $SETUP_ERROR"; stop_all 15; return 0; }
    for name in "${relay_names[@]}"; do
      local deadline=$((SECONDS + 60))
      until grep -q "relayed repo=$REPO serial=1 " "$LOGS/$name.log"; do
        ((SECONDS < deadline)) || { fail_setup "$n" "$kind" "$name applied serial 1 but logged no 'relayed repo=$REPO serial=1' within 60 s: $(tail -n 1 "$LOGS/$name.log" | cut -c1-250)"; stop_all 15; return 0; }
        sleep 0.05
      done
    done
  fi
  for ((i = 1; i <= R; i++)); do
    for ((j = 1; j <= M; j++)); do
      name=m$i-$j-$n-$kind
      if [[ $kind == relay ]]; then start_subscriber "$name" "${ADDR_OF[relay-$i-$n]}" "$w/m$i-$j"
      else start_subscriber "$name" "${ADDR_OF[$origin]}" "$w/m$i-$j"; fi
      names+=("$name")
    done
  done
  local tb=$SECONDS
  wait_applied 1 "$serial1_bound" "${names[@]}" ||
    { fail_setup "$n" "$kind" "mirrors, serial 1: $SETUP_ERROR"; stop_all 15; return 0; }
  info "$kind: $((R * M)) mirrors at serial 1 (adopted their hard-linked trees) in $((SECONDS - tb)) s"
  sleep 2 # event subscriptions settle (PUB/SUB drops what precedes them)

  local round serial last first l_e="" l_t="" l_c="" rports=""
  if [[ $kind == relay ]]; then
    for name in "${relay_names[@]}"; do rports+=" ${PORTS_OF[$name]}"; done
  fi
  for ((round = 1; round <= ROUNDS; round++)); do
    serial=$((round + 1))
    update_tree "$n" "$origin_tree" "$round"
    # shellcheck disable=SC2086
    sock_counters ${PORTS_OF[$origin]} >"$w/sock.before"
    # shellcheck disable=SC2086
    [[ $kind != relay ]] || sock_counters $rports >"$w/relay-sock.before"
    cpu0=$(proc_cpu "${PID_OF[$origin]}")
    t0=$(now)
    publish "$origin" "$origin_tree" "$w/pub-state" "$serial" ||
      { fail_setup "$n" "$kind" "update publish (round $round): $SETUP_ERROR"; stop_all 15; return 0; }
    info "$kind round $round: publisher: $PUB_OUT($(sub "$(now)" "$t0") s)"
    wait_applied "$serial" "$update_bound" "${names[@]}" ||
      { fail_setup "$n" "$kind" "update (round $round): $SETUP_ERROR"; stop_all 15; return 0; }
    last=$APPLIED_LAST first=$APPLIED_FIRST
    sleep 1 # the ACKs (and, through relays, their batches) reach the origin
    cpu1=$(proc_cpu "${PID_OF[$origin]}")
    # shellcheck disable=SC2086
    sock_counters ${PORTS_OF[$origin]} >"$w/sock.after"
    sock_delta "$w/sock.before" "$w/sock.after"
    l_e+=" $SOCK_BYTES" l_t+=" $(sub "$last" "$t0")" l_c+=" $(sub "$cpu1" "$cpu0")"
    info "$kind round $round: first mirror applied after $(sub "$first" "$t0") s, all $((R * M)) after" \
      "$(sub "$last" "$t0") s; origin sent $SOCK_BYTES bytes ($(human_bytes "$SOCK_BYTES")) on" \
      "$(wc -l <"$w/sock.after") sockets ($SOCK_NEW new, $SOCK_GONE closed in between: their bytes are" \
      "not counted), origin CPU $(sub "$cpu1" "$cpu0") s"
    if [[ $kind == relay ]]; then
      # shellcheck disable=SC2086
      sock_counters $rports >"$w/relay-sock.after"
      sock_delta "$w/relay-sock.before" "$w/relay-sock.after"
      local rl="" ts
      for name in "${relay_names[@]}"; do
        ts=$(log_epoch "$(grep -m 1 -E "applied repo=$REPO serial=$serial " "$LOGS/$name.log" | cut -d' ' -f1)") || ts=$t0
        rl+=" $(sub "$ts" "$t0")"
        ts=$(log_epoch "$(grep -m 1 -E "relayed repo=$REPO serial=$serial " "$LOGS/$name.log" | cut -d' ' -f1)") || ts=$t0
        rl+="/$(sub "$ts" "$t0")"
      done
      info "relay round $round: relays applied/re-published after (s):$rl; the relays sent $SOCK_BYTES" \
        "bytes ($(human_bytes "$SOCK_BYTES")) to their mirrors ($SOCK_GONE sockets closed in between)"
    fi
  done
  V[$n.${kind}_egress]=$(median <<<"$l_e")
  V[$n.${kind}_time]=$(median <<<"$l_t")
  V[$n.${kind}_cpu]=$(median <<<"$l_c")
  for ((i = 1; i <= R; i++)); do
    for ((j = 1; j <= M; j++)); do
      [[ $(tree_listing "$w/m$i-$j") == "$ORIGIN_LISTING" ]] ||
        { fail_setup "$n" "$kind" "mirror m$i-$j differs from the origin after serial $serial"; break 2; }
    done
  done
  stop_all 15
  [[ -z $STOP_FAILURES ]] || info "stopped by force or failed:$STOP_FAILURES"
  [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$w"
}

# rsync hub-and-spoke: R relay daemons, each pulled by M mirrors.
run_rsync() { # N
  local n=$1 w=$D/n$1-rsync i j cpu0 cpu1 t0 t1 chains=() rc=0 egress=0
  mkdir -p "$w"
  cp -al "$BASE" "$w/origin"
  for ((i = 1; i <= R; i++)); do cp -al "$BASE" "$w/relay-$i"; done
  for name in "${MIRRORS[@]}"; do cp -al "$BASE" "$w/$name"; done
  start_rsyncd "rsyncd-origin-$n" "$w/origin"
  local origin_url=$RSYNCD_URL origin_pid=$RSYNCD_PID relay_url=()
  for ((i = 1; i <= R; i++)); do
    start_rsyncd "rsyncd-relay-$i-$n" "$w/relay-$i"
    relay_url[i]=$RSYNCD_URL
  done
  local round l_e="" l_t="" l_c=""
  for ((round = 1; round <= ROUNDS; round++)); do
    update_tree "$n" "$w/origin" "$round"
    cpu0=$(proc_cpu "$origin_pid" all)
    t0=$(now)
    chains=()
    for ((i = 1; i <= R; i++)); do
      (
        set -e
        timeout -k 10 600 "$RSYNC" -a --delete --stats "$origin_url" "$w/relay-$i/" \
          >"$w/relay-$i.stats" 2>>"$LOGS/rsync-$n.log"
        now >"$w/relay-$i.done"
        pids=()
        for ((j = 1; j <= M; j++)); do
          timeout -k 10 600 "$RSYNC" -a --delete --stats "${relay_url[i]}" "$w/m$i-$j/" \
            >"$w/m$i-$j.stats" 2>>"$LOGS/rsync-$n.log" &
          pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p"; done
      ) &
      chains+=($!)
      JOBS+=($!)
    done
    for i in "${chains[@]}"; do wait "$i" || rc=$?; done
    t1=$(now)
    JOBS=()
    wait_reaped "$origin_pid"
    cpu1=$(proc_cpu "$origin_pid" all)
    ((rc == 0)) || break
    egress=0
    for ((i = 1; i <= R; i++)); do egress=$((egress + $(rs_received "$w/relay-$i.stats"))); done
    l_e+=" $egress" l_t+=" $(sub "$t1" "$t0")" l_c+=" $(sub "$cpu1" "$cpu0")"
    local rl="" mb=0
    for ((i = 1; i <= R; i++)); do rl+=" $(sub "$(cat "$w/relay-$i.done")" "$t0")"; done
    for name in "${MIRRORS[@]}"; do mb=$((mb + $(rs_received "$w/$name.stats"))); done
    info "rsync round $round: relays done after (s):$rl; all $((R * M)) mirrors after $(sub "$t1" "$t0") s;" \
      "origin daemon sent $egress bytes ($(human_bytes "$egress")) by the relays' --stats, CPU" \
      "$(sub "$cpu1" "$cpu0") s; the relays sent $mb bytes ($(human_bytes "$mb")) to their mirrors"
  done
  if ((rc != 0)); then
    fail_setup "$n" rsync "an rsync pull failed (exit $rc): $(first_error "$LOGS/rsync-$n.log")"
  else
    V[$n.rsync_egress]=$(median <<<"$l_e")
    V[$n.rsync_time]=$(median <<<"$l_t")
    V[$n.rsync_cpu]=$(median <<<"$l_c")
    for name in "${MIRRORS[@]}"; do
      [[ $(tree_listing "$w/$name") == "$ORIGIN_LISTING" ]] ||
        { fail_setup "$n" rsync "mirror $name differs from the origin"; break; }
    done
  fi
  stop_all 15
  [[ -z $STOP_FAILURES ]] || info "stopped by force or failed:$STOP_FAILURES"
  [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$w"
}

run_size() { # N
  local n=$1 t0 pk
  pk=$((n - 2))
  say "size $(short "$n"): $pk packages ($MIN_BYTES-$MAX_BYTES B) + repodata/; update: $((pk * 6 / 1000))" \
    "rewritten, $((pk * 3 / 1000)) added, $((pk / 1000)) deleted + repodata/; $R relays x $M mirrors"
  BASE=$D/base-$n
  t0=$(now)
  timeout 1200 "$GEN" tree "$BASE" --small "$pk" --min "$MIN_BYTES" --max "$MAX_BYTES" --large 0 \
    --seed $((n % 1000 + 91)) >"$D/gen.out" 2>>"$LOGS/gen.log" ||
    die "mirrorcast-bench-gen tree failed (log: $LOGS/gen.log)"
  info "generated $(cat "$D/gen.out") in $(printf '%.1f' "$(sub "$(now)" "$t0")") s;" \
    "$(du -s -BM "$BASE" | cut -f1) on disk"
  # What every mirror must hold after the updates (made on a scratch copy).
  cp -al "$BASE" "$D/expected-$n"
  local round
  for ((round = 1; round <= ROUNDS; round++)); do update_tree "$n" "$D/expected-$n" "$round"; done
  ORIGIN_LISTING=$(tree_listing "$D/expected-$n")
  rm -rf "$D/expected-$n"
  local kind
  for kind in relay direct rsync; do
    t0=$SECONDS
    if [[ $kind == rsync ]]; then run_rsync "$n"; else run_mirrorcast "$n" "$kind"; fi
    info "($kind took $((SECONDS - t0)) s)"
  done
  [[ -n ${BENCH_KEEP:-} ]] || rm -rf "$BASE"
}

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
fmt() { # VALUE UNIT
  case $2 in
    s) awk -v v="$1" 'BEGIN { printf (v < 10 ? "%.3f s" : "%.1f s"), v }' ;;
    bytes) awk -v v="$1" 'BEGIN { if (v >= 1048576) printf "%.2f MiB", v / 1048576
      else printf "%.1f KiB", v / 1024 }' ;;
    *) printf '%s' "$1" ;;
  esac
}
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) { print "n/a"; exit }
    r = a / b; if (r < 0.001) printf "%.2e\n", r; else if (r < 10) printf "%.3f\n", r; else printf "%.1f\n", r }'
}
cell() { # SIZE KEY UNIT
  local v=${V[$1.$2]:-} f=${F[$1.$2]:-}
  if [[ -n $v ]]; then fmt "$v" "$3"
  elif [[ -n $f ]]; then printf 'FAILED'
  else printf -- '-'; fi
}
machine() {
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit:  $(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "machine: nproc $(nproc) ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
  echo "memory:  $(free -h | awk '/^Mem:/ { print $2 " total, " $7 " available" }')"
  echo "rsync:   $("$RSYNC" --version | head -n 1)"
  echo "set-up:  $R relays x $M mirrors per relay ($((R * M)) mirrors); scale $SCALE, sizes: $SIZES files;"
  echo "         $ROUNDS updates per set-up and size (medians)"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)"
}
report() {
  local n rows=() k unit label
  for n in $SIZES; do
    for k in egress:bytes:"origin egress per update" time:s:"publish start -> all $((R * M)) mirrors applied" \
      cpu:s:"origin CPU seconds per update (user+sys)"; do
      IFS=: read -r key unit label <<<"$k"
      local rv=${V[$n.relay_$key]:-} dv=${V[$n.direct_$key]:-} sv=${V[$n.rsync_$key]:-} r1=- r2=-
      [[ -z $rv || -z $dv ]] || r1=$(ratio "$rv" "$dv")
      [[ -z $rv || -z $sv ]] || r2=$(ratio "$rv" "$sv")
      rows+=("$(short "$n")|$label|$(cell "$n" "relay_$key" "$unit")|$(cell "$n" "direct_$key" "$unit")|$(cell "$n" "rsync_$key" "$unit")|$r1|$r2")
    done
  done
  {
    echo "mirrorcast relay benchmark: one origin, $R relays, $M mirrors per relay, vs the same mirrors"
    echo "fed directly by the origin and vs rsync hub-and-spoke (ratio below 1 favours the relays)"
    machine
    echo "total:   $((SECONDS - START)) s"
    echo
    printf '%s\n' "size|figure|mirrorcast relays|mirrorcast direct|rsync hub-and-spoke|relays/direct|relays/rsync" \
      "${rows[@]}" |
      awk -F'|' '{ for (i = 1; i <= NF; i++) { cell[NR, i] = $i
                     if (length($i) > w[i]) w[i] = length($i) } }
        END { for (r = 1; r <= NR; r++) {
                line = ""
                for (i = 1; i <= 7; i++) line = line sprintf("%-" w[i] "s", cell[r, i]) (i < 7 ? "  " : "")
                sub(/ +$/, "", line); print line
                if (r == 1) { line = ""; for (i = 1; i <= 7; i++) { s = sprintf("%" w[i] "s", "")
                  gsub(/ /, "-", s); line = line s (i < 7 ? "  " : "") } print line } } }'
    local notes=() kind
    for n in $SIZES; do
      for kind in relay direct rsync; do
        [[ -z ${F[$n.${kind}_time]:-} ]] || notes+=("  $(short "$n") $kind: ${F[$n.${kind}_time]}")
      done
    done
    if ((${#notes[@]} > 0)); then
      echo
      echo "failed set-ups (the first error line):"
      printf '%s\n' "${notes[@]}"
    fi
  } >"$RESULTS_FILE"
  echo
  cat "$RESULTS_FILE"
  echo
  echo "(written to $RESULTS_FILE)"
  TABLE_PRINTED=1
}

# ---------------------------------------------------------------------------
say "relay benchmark, work directory $D"
machine | sed 's/^/    /'
"$BIN/mirrorcast" keygen --out "$D/origin" >>"$LOGS/keygen.log" 2>&1 ||
  die "mirrorcast keygen failed (log: $LOGS/keygen.log)"
for n in $SIZES; do
  t_size=$SECONDS
  run_size "$n"
  info "(size $(short "$n") took $((SECONDS - t_size)) s)"
done
report
((ANY_FAILED == 0)) || {
  echo "some set-ups FAILED (see above); the figures that could be measured are in the table"
  exit 1
}
