#!/usr/bin/env bash
# mirrorcast scale benchmark (issue 6): the same scenario on trees of two (or
# three) sizes, each side by side with rsync in one run, as ratios.
#
#   bash bench/scale.sh BUILD_DIR          (also: bash bench/run.sh BUILD_DIR scale)
#
# Sizes (files in the tree, all counted):
#   BENCH_SCALE=small   10k and 50k         (a few minutes)
#   BENCH_SCALE=full    100k and 1M         (default; 10-30 minutes)
#   BENCH_SCALE=huge    100k, 1M and 5M     (by hand only; needs ~2x5M free inodes)
#   BENCH_SCALE_SIZES="20000 40000"         any sizes instead (ascending)
#   BENCH_SCALE_ROUNDS=N                    update rounds per size (default 3; medians)
#   BENCH_DIR=DIR, BENCH_KEEP=1             as for bench/run.sh
#
# Per size: generate a tree (mostly 512 B-2 KiB packages, 300 per directory,
# 3 large images, repodata/ with repomd.xml), then
#   a. first publish (wall, publisher CPU, CPU/wall) vs an `rsync -a` pull of
#      the whole tree into an empty directory
#   g. bootstrap of an empty mirror (mirrorcast-subscriber --once) vs the same
#      rsync pull; CPU per file of the subscriber vs the rsync receiver
#   then ROUNDS times two updates of 10 files (modify 5, add 3, delete 2, and
#   regenerated repodata/), one published with a full stat scan, one with
#   --paths-from; for each:
#   b. publish wall time (full scan) vs `find TREE -printf '%s %T@\n'` (warm)
#   c. publish wall time (--paths-from)
#   d. broker and subscriber CPU seconds spent on the update (/proc/PID/stat)
#   e. publish start -> the mirror's applied ACK at the broker vs an
#      `rsync -a --delete` pull of the same update into a copy of the tree
#   f. peak RSS (VmHWM / ru_maxrss) of broker, publisher and subscriber, and
#      their growth per entry between sizes
# Targets are printed next to the figures and marked met/missed; a missed
# target does not fail the script. A step that does not work (a command fails,
# a mirror never converges within a generous bound) is recorded as FAILED
# with its first error line; the script goes on with what can still be
# measured, prints the table, and exits 1.
#
# Everything is on 127.0.0.1. Every process started is stopped and the work
# directory removed on every exit path (unless BENCH_KEEP=1); every wait is
# bounded. Results: stdout and BUILD_DIR/bench-scale-results.txt.
set -euo pipefail

BUILD_DIR=${1:-build}
SCALE=${BENCH_SCALE:-full}
case $SCALE in
  small) SIZES="10000 50000" LARGE_BYTES=$((8 << 20)) ;;
  full) SIZES="100000 1000000" LARGE_BYTES=$((64 << 20)) ;;
  huge) SIZES="100000 1000000 5000000" LARGE_BYTES=$((64 << 20)) ;;
  *)
    echo "BENCH_SCALE must be small, full or huge" >&2
    exit 2
    ;;
esac
SIZES=${BENCH_SCALE_SIZES:-$SIZES}
ROUNDS=${BENCH_SCALE_ROUNDS:-3}
PER_DIR=300                  # packages per directory
MIN_BYTES=512 MAX_BYTES=2048 # package sizes, log-uniform
LARGE=3                      # large images under isos/
META=3                       # repodata/: primary, filelists, repomd.xml
UPD_MODIFY=5 UPD_ADD=3 UPD_DELETE=2
REPO=scale
CLK_TCK=$(getconf CLK_TCK)

say() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

[[ -d $BUILD_DIR/bin ]] || die "no $BUILD_DIR/bin: build first (make build)"
BIN=$(cd "$BUILD_DIR/bin" && pwd)
for prog in mirrorcast mirrorcast-broker mirrorcast-publish mirrorcast-subscriber \
  mirrorcast-bench-gen; do
  [[ -x $BIN/$prog ]] || die "$BIN/$prog is missing: build first (make build)"
done
GEN=$BIN/mirrorcast-bench-gen
# Measured without CURVE, like every figure in docs/benchmarks.md (a lab
# setting on loopback; the demo and the integration tests run over CURVE).
TRANSPORT=--insecure-plaintext
RSYNC=$(command -v rsync) || die "rsync is not installed (apt-get install rsync)"
command -v ss >/dev/null || die "ss is not installed (apt-get install iproute2)"
RESULTS_FILE=$(cd "$BUILD_DIR" && pwd)/bench-scale-results.txt
prev=0
for n in $SIZES; do
  [[ $n =~ ^[0-9]+$ ]] && ((n > LARGE + META + UPD_MODIFY + UPD_ADD + UPD_DELETE + 10)) ||
    die "bad size '$n'"
  ((n > prev)) || die "sizes must ascend: $SIZES"
  prev=$n
done

D=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/mirrorcast-scale.XXXXXX")
LOGS=$D/logs
mkdir -p "$LOGS"

# shellcheck source=../deploy/lib/daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/lib/daemons.sh"

# ---------------------------------------------------------------------------
# Results: V[size.key] holds a measured number, F[size.key] "FAILED: why" or
# "SKIPPED: why". The table is built from them at the end (also on an early
# exit, from the trap).
# ---------------------------------------------------------------------------
declare -A V F NOTE
ANY_FAILED=0
TABLE_PRINTED=0
START=$SECONDS
fail_step() { # SIZE KEY... -- MESSAGE: the first key is the step, the rest share it
  local n=$1 keys=() k
  shift
  while [[ $1 != -- ]]; do
    keys+=("$1")
    shift
  done
  shift
  local msg=${1:0:400}
  for k in "${keys[@]}"; do F[$n.$k]="FAILED: $msg"; done
  ANY_FAILED=1
  info "FAILED ($n files) ${keys[0]}: $msg"
}
skip_step() { # SIZE MESSAGE KEY...
  local n=$1 msg=$2 k
  shift 2
  for k in "$@"; do [[ -n ${F[$n.$k]:-} || -n ${V[$n.$k]:-} ]] || F[$n.$k]="SKIPPED: $msg"; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n ${JOB:-} ]]; then
    kill -TERM "$JOB" 2>/dev/null || true
    wait "$JOB" 2>/dev/null || true # timeout -k 10: gone within 10 s
  fi
  stop_all 15 || true
  [[ -z $STOP_FAILURES ]] || echo "stopped by force or failed:$STOP_FAILURES"
  local early=$((1 - TABLE_PRINTED))
  if ((early)); then
    echo "(exiting early, status $rc: the table holds what was measured so far)"
    report || true
  fi
  if ((rc != 0 && early)); then
    echo "---- last lines of the logs ($LOGS) ----"
    local f
    for f in $(ls -t "$LOGS"/*.log 2>/dev/null | head -n 4); do
      echo "-- ${f##*/}"
      tail -n 6 "$f" | cut -c1-300 | sed 's/^/   /'
    done
  fi
  if [[ -n ${BENCH_KEEP:-} ]]; then echo "(kept $D)"; else rm -rf "$D"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# Arithmetic, formatting, /proc
# ---------------------------------------------------------------------------
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; } # EXPRESSION (numbers only)
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }
median() { tr ' ' '\n' | { grep . || true; } | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
now() { printf '%s' "$EPOCHREALTIME"; }
log_epoch() { # a log timestamp (2026-01-02T03:04:05.123456, local time) -> epoch seconds
  [[ $1 =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+$ ]] || return 1
  date -d "$1" +%s.%N
}
short() { # 1000000 -> 1M, 50000 -> 50k
  if (($1 >= 1000000 && $1 % 1000000 == 0)); then echo "$(($1 / 1000000))M"
  elif (($1 >= 1000 && $1 % 1000 == 0)); then echo "$(($1 / 1000))k"
  else echo "$1"; fi
}

# CPU seconds (utime + stime) of a live process, and of its reaped children.
proc_cpu() { # PID
  awk -v hz="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null ||
    echo 0
}
proc_child_cpu() { # PID
  awk -v hz="$CLK_TCK" '{ sub(/^.*\) /, ""); printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null ||
    echo 0
}
proc_hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; } # PID
mfield() { sed -n -E "s/.*(^| )$2=([0-9.]+).*/\\2/p" "$1"; } # MEASURE_FILE FIELD

# Runs COMMAND under `timeout BOUND`, in the background so that a signal to
# this script is handled at once (bash runs traps only between commands; `wait`
# is interrupted); the trap stops JOB. Returns the command's status.
JOB=""
bounded() { # BOUND COMMAND...
  local bound=$1 rc=0
  shift
  timeout -k 10 "$bound" "$@" &
  JOB=$!
  wait "$JOB" || rc=$?
  JOB=""
  return "$rc"
}

# Runs COMMAND bounded and under `mirrorcast-bench-gen measure`, stdout to
# OUT, stderr to ERR. MEAS gets wall/user/sys/maxrss_kb/status. Returns the
# command's status.
measured() { # BOUND MEAS OUT ERR COMMAND...
  local bound=$1 meas=$2 out=$3 err=$4 rc=0
  shift 4
  rm -f "$meas"
  bounded "$bound" "$GEN" measure "$meas" -- "$@" >"$out" 2>"$err" || rc=$?
  if [[ ! -s $meas ]]; then
    echo "wall=0 user=0 sys=0 maxrss_kb=0 status=$rc" >"$meas"
    ((rc != 124)) || echo "timed out after $bound s" >>"$err"
  fi
  return "$rc"
}
first_error() { # ERR_FILE: the first line that names an error, else the last line
  local line
  line=$(grep -m 1 -i -E 'error|fail|refus|cannot|timed out|over the' "$1" 2>/dev/null || true)
  [[ -n $line ]] || line=$(tail -n 1 "$1" 2>/dev/null || true)
  printf '%s' "${line:-no output}" | cut -c1-300
}

# ---------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------
start_broker() { # NAME TREE_ROOT -> BROKER, BROKER_PID, BROKER_LOG
  local name=$1 root=$2 deadline
  start_daemon "$name" "$BIN/mirrorcast-broker" --listen 127.0.0.1:0 --port-file "$D/$name.port" \
    --state "$D/$name-state" --tree-root "$root" --trust "$D/origin.pub" $TRANSPORT
  BROKER_PID=$LAST_PID
  BROKER_LOG=$LOGS/$name.log
  deadline=$((SECONDS + 30))
  while [[ ! -s $D/$name.port ]]; do
    check_alive
    ((SECONDS < deadline)) || die "broker wrote no --port-file within 30 s"
    sleep 0.05
  done
  sleep 0.05
  BROKER=$(tr -d '[:space:]' <"$D/$name.port")
  [[ $BROKER =~ ^127\.0\.0\.1:[0-9]+$ ]] || die "unexpected port file content: '$BROKER'"
}

start_rsyncd() { # NAME PATH -> RSYNC_URL, RSYNCD_PID
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
[origin]
  path = $path
  read only = yes
EOF
    start_daemon "$name" "$RSYNC" --daemon --no-detach --config="$conf" --address=127.0.0.1 \
      --port="$port"
    RSYNCD_PID=$LAST_PID
    deadline=$((SECONDS + 10))
    while kill -0 "$RSYNCD_PID" 2>/dev/null && ((SECONDS < deadline)); do
      if ss -ltnH "sport = :$port" | grep -q .; then
        RSYNC_URL=rsync://127.0.0.1:$port/origin/
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

# Name, type and size of everything in a tree (mirrorcast checks every
# SHA-256 itself; this is a cheap identity check of the result).
tree_listing() {
  (cd "$1" && timeout "$BOUND_LONG" find . \( -name .mirrorcast-staging -prune \) -o \
    \( -type d -printf '%P d\n' \) -o -printf '%P %y %s\n' | LC_ALL=C sort | md5sum | cut -d' ' -f1)
}

# Seconds since local midnight of an epoch time (no fork: printf %()T), to
# compare with the programs' log timestamps (local time).
tod() { # EPOCH
  local h m s
  printf -v h '%(%H)T' "${1%.*}"
  printf -v m '%(%M)T' "${1%.*}"
  printf -v s '%(%S)T' "${1%.*}"
  echo "$((10#$h * 3600 + 10#$m * 60 + 10#$s)).${1#*.}"
}
# Where a successful publish spent its time, from its log lines' timestamps.
publish_phases() { # ERR_FILE START_EPOCH END_EPOCH
  awk -v t0="$(tod "$2")" -v t9="$(tod "$3")" '
    function tod(ts, p, v) {
      split(substr(ts, 12), p, ":"); v = p[1] * 3600 + p[2] * 60 + p[3]
      if (v < t0 - 43200) v += 86400 # past midnight
      return v }
    / broker=.* latest_serial=/ { hello = tod($1) }
    /scanned repo=/ {
      scan = tod($1)
      for (i = 2; i <= NF; i++) if ($i ~ /^seconds=/) { sub(/^seconds=/, "", $i); scan_s = $i + 0 } }
    /publishing repo=/ { sign = tod($1) }
    /published repo=/ { pub = tod($1) }
    END {
      if (!hello || !scan || !sign || !pub) { printf "phases: ?"; exit }
      # No line marks the end of loading the previous manifest: it is the
      # time from hello to the end of the scan, minus the scan itself.
      printf "start+hello %.3f, load previous manifest %.3f, scan %.3f, diff+sign %.3f, broker accepts %.3f, save+exit %.3f",
        hello - t0, scan - hello - scan_s, scan_s, sign - scan, pub - sign, t9 - pub }' "$1"
}

# One publish of the tree; PUB_SECONDS, PUB_CPU, PUB_RSS_KB, PUB_SCAN_SECONDS,
# PUB_PHASES, PUB_ERROR. Returns 0 only if it published serial EXPECT.
publish() { # N EXPECT_SERIAL [--paths-from FILE]
  local n=$1 expect=$2 out=$D/publish.out err=$D/publish.err meas=$D/publish.meas rc=0 t0 t1
  shift 2
  t0=$(now)
  measured "$BOUND_LONG" "$meas" "$out" "$err" "$BIN/mirrorcast-publish" --broker "$BROKER" \
    --key "$D/origin.key" --repo "$REPO" --tree "$ORIGIN" --state "$PUB_STATE" $TRANSPORT "$@" ||
    rc=$?
  t1=$(now)
  PUB_ENDED=$t1
  { cat "$err" "$out"; } >>"$LOGS/publish-$n.log"
  PUB_SECONDS=$(mfield "$meas" wall)
  PUB_CPU=$(calc "$(mfield "$meas" user) + $(mfield "$meas" sys)")
  PUB_RSS_KB=$(mfield "$meas" maxrss_kb)
  ((PUB_RSS_KB <= ${PUB_PEAK_KB:-0})) || PUB_PEAK_KB=$PUB_RSS_KB
  PUB_SCAN_SECONDS=$({ grep -E "scanned repo=$REPO " "$err" || true; } | tail -n 1 |
    sed -n -E 's/.* seconds=([0-9.eE+-]+).*/\1/p')
  PUB_ERROR=""
  if ((rc != 0)); then
    PUB_ERROR="mirrorcast-publish exit $rc: $(first_error "$err")"
    return 1
  fi
  if ! grep -q "published repo=$REPO serial=$expect " "$out"; then
    PUB_ERROR="expected a publish of serial $expect, got: $(head -c 300 "$out" | tr '\n' ' ')"
    return 1
  fi
  PUB_PHASES=$(publish_phases "$err" "$t0" "$t1")
  return 0
}

# Waits until the broker logs the mirror's applied ACK for SERIAL (or the
# subscriber's own applied line, if the broker's log says nothing); sets
# APPLIED_AT (epoch seconds). Polls log files only: no status calls, which
# would cost the broker CPU inside the measured window.
wait_applied() { # SERIAL
  local serial=$1 deadline=$((SECONDS + BOUND_APPLY)) line ts
  APPLIED_AT="" APPLY_ERROR=""
  while ((SECONDS < deadline)); do
    if ! kill -0 "$SUB_PID" 2>/dev/null; then
      APPLY_ERROR="the subscriber exited: $(first_error "$SUB_LOG")"
      return 1
    fi
    line=$(grep -m 1 -E " ack mirror=$SUB_ID repo=$REPO serial=$serial state=ACK_APPLIED" "$BROKER_LOG" || true)
    if [[ -n $line ]] && ts=$(log_epoch "${line%% *}"); then
      APPLIED_AT=$ts
      return 0
    fi
    sleep 0.05
  done
  line=$(grep -m 1 -E "applied repo=$REPO serial=$serial " "$SUB_LOG" || true)
  if [[ -n $line ]] && ts=$(log_epoch "${line%% *}"); then
    APPLIED_AT=$ts
    info "(no applied ACK in the broker log; using the subscriber's applied line)"
    return 0
  fi
  APPLY_ERROR="mirror did not apply serial $serial within $BOUND_APPLY s; last subscriber line: $(tail -n 1 "$SUB_LOG" | cut -c1-200)"
  return 1
}

rsync_pull() { # BOUND DEST [RSYNC OPTIONS...] -> RS_SECONDS, RS_CPU (client), RS_DAEMON_CPU
  local bound=$1 dest=$2 meas=$D/rsync.meas d0 d1 rc=0
  shift 2
  d0=$(proc_child_cpu "$RSYNCD_PID")
  measured "$bound" "$meas" "$D/rsync.out" "$D/rsync.err" "$RSYNC" "$@" "$RSYNC_URL" "$dest/" || rc=$?
  cat "$D/rsync.err" >>"$LOGS/rsync.log"
  sleep 0.3 # the daemon reaps its per-connection child, adding its CPU to cutime
  d1=$(proc_child_cpu "$RSYNCD_PID")
  RS_SECONDS=$(mfield "$meas" wall)
  RS_CPU=$(calc "$(mfield "$meas" user) + $(mfield "$meas" sys)")
  RS_DAEMON_CPU=$(sub "$d1" "$d0")
  RS_ERROR=""
  ((rc == 0)) || RS_ERROR="rsync exit $rc: $(first_error "$D/rsync.err")"
  return "$rc"
}

# ---------------------------------------------------------------------------
# One size
# ---------------------------------------------------------------------------
run_size() { # N
  local n=$1 w pkgs t0 t1 rc free_inodes free_kb need_inodes need_kb serial=0
  w=$D/n$n
  pkgs=$((n - LARGE - META))
  BOUND_LONG=$((600 + n / 500))  # generate, publish, bootstrap, rsync: 2600 s at 1M
  BOUND_APPLY=$((120 + n / 5000)) # one small update reaching the mirror: 320 s at 1M
  say "size $(short "$n"): $pkgs packages ($MIN_BYTES-$MAX_BYTES B, $PER_DIR per directory)," \
    "$LARGE images of $((LARGE_BYTES >> 20)) MiB, repodata/"

  # Three copies of the tree: the origin, the rsync pull's copy (which then
  # serves as the rsync mirror for the update pulls) and the mirrorcast
  # mirror. ext4 gives each small file a 4 KiB block. When there is room for
  # only two (5M files), the rsync mirror is a hard-linked copy of the origin
  # instead and the pulled copy is removed before the mirror bootstraps.
  mkdir -p "$w"
  free_inodes=$(df -P -i "$w" | awk 'NR == 2 { print $4 }')
  free_kb=$(df -P -k "$w" | awk 'NR == 2 { print $4 }')
  local copy_inodes=$((n + n / PER_DIR + 100)) copy_kb=$((n * 4 + LARGE * (LARGE_BYTES >> 10)))
  local linked=0
  # Beside the trees: the broker's, publisher's and mirror's SQLite state
  # and manifest objects (about 2 KiB per entry in all, measured at 5 M),
  # and 8 GiB left for the rest of the machine (a 5 M run filled the disk
  # without that margin).
  local state_kb=$((n * 2 + (8 << 20)))
  need_inodes=$((3 * copy_inodes + copy_inodes / 20 + 100000))
  need_kb=$((3 * copy_kb + state_kb))
  if ((free_inodes < need_inodes || free_kb < need_kb)); then
    linked=1
    need_inodes=$((2 * copy_inodes + copy_inodes / 20 + 10000))
    need_kb=$((2 * copy_kb + state_kb))
  fi
  if ((free_inodes < need_inodes || free_kb < need_kb)); then
    skip_step "$n" "not enough room: need $need_inodes inodes and $((need_kb >> 20)) GiB, have $free_inodes and $((free_kb >> 20)) GiB" \
      "${ALL_KEYS[@]}"
    info "skipped: ${F[$n.a_wall]}"
    rm -rf "$w"
    return 0
  fi

  ORIGIN=$w/root/$REPO
  PUB_STATE=$w/pub-state
  PUB_PEAK_KB=0
  t0=$(now)
  bounded "$BOUND_LONG" "$GEN" tree "$ORIGIN" --small "$pkgs" --min "$MIN_BYTES" --max "$MAX_BYTES" \
    --per-dir "$PER_DIR" --large "$LARGE" --large-bytes "$LARGE_BYTES" --seed $((n % 1000 + 7)) \
    >"$D/gen.out" 2>>"$LOGS/gen.log" || die "mirrorcast-bench-gen tree failed (log: $LOGS/gen.log)"
  info "generated $(cat "$D/gen.out") in $(printf '%.1f' "$(sub "$(now)" "$t0")") s;" \
    "$(timeout 600 du -s -BM "$ORIGIN" | cut -f1) on disk"
  if ((linked)); then
    # Hard links, made before the first publish (a new link changes the
    # inode's ctime, part of the publisher's hash-cache key). Safe: the
    # generator, mirrorcast and rsync replace files by rename, never in place.
    t0=$(now)
    bounded "$BOUND_LONG" cp -al "$ORIGIN" "$w/rs-mirror" || die "cp -al failed"
    info "not enough room for three copies: rsync mirror made by cp -al in $(printf '%.1f' "$(sub "$(now)" "$t0")") s"
  fi

  start_broker "broker-$n" "$w/root"
  start_rsyncd "rsyncd-$n" "$ORIGIN"

  # a. first publish vs an rsync pull of the whole tree.
  local first_ok=0 rs_broken=0
  serial=1
  if publish "$n" 1; then
    first_ok=1
    V[$n.a_wall]=$PUB_SECONDS
    V[$n.a_cpu]=$PUB_CPU
    V[$n.a_cores]=$(calc "$PUB_CPU / $PUB_SECONDS")
    info "first publish: $PUB_SECONDS s, CPU $PUB_CPU s, peak RSS $((PUB_RSS_KB >> 10)) MiB;" \
      "$PUB_PHASES"
  else
    fail_step "$n" a_wall a_cpu a_cores -- "first publish: $PUB_ERROR [it ran $(printf '%.1f' "$PUB_SECONDS") s, CPU $(printf '%.1f' "$PUB_CPU") s, scan phase ${PUB_SCAN_SECONDS:-?} s, peak RSS $((PUB_RSS_KB >> 10)) MiB]"
    NOTE[$n.f_pub]="failed run"
  fi
  if rsync_pull "$BOUND_LONG" "$w/rs-init" -a; then
    V[$n.rs_init]=$RS_SECONDS
    V[$n.rs_init_cpu_us]=$(calc "$RS_CPU * 1000000 / $n")
    info "rsync -a initial pull: $RS_SECONDS s; client (receiver) CPU $RS_CPU s, daemon (sender) CPU $RS_DAEMON_CPU s"
  else
    fail_step "$n" rs_init rs_init_cpu_us -- "$RS_ERROR"
    ((linked)) || rs_broken=1
  fi
  if ((linked)); then
    t0=$(now)
    bounded "$BOUND_LONG" rm -rf "$w/rs-init" || die "rm -rf $w/rs-init failed"
    info "(removed the pulled copy in $(printf '%.1f' "$(sub "$(now)" "$t0")") s)"
  elif ((!rs_broken)); then
    mv "$w/rs-init" "$w/rs-mirror" # the rsync mirror for the update pulls
  fi

  # g. bootstrap of an empty mirror, then the mirror runs as a daemon.
  SUB_ID=mirror-$n
  SUB_LOG=$LOGS/$SUB_ID.log
  SUB_PID=""
  local sub_ok=0 boot_rss_kb=0
  if ((first_ok)); then
    local meas=$D/boot.meas
    rc=0
    measured "$BOUND_LONG" "$meas" "$D/boot.out" "$D/boot.err" "$BIN/mirrorcast-subscriber" \
      --broker "$BROKER" --trust "$D/origin.pub" --repo "$REPO" --tree "$w/mc-mirror" \
      --state "$w/sub-state" --id "$SUB_ID" --no-trace-files --delete-delay 0 --once $TRANSPORT || rc=$?
    cat "$D/boot.err" "$D/boot.out" >>"$LOGS/bootstrap-$n.log"
    boot_rss_kb=$(mfield "$meas" maxrss_kb)
    if ((rc == 0)) && grep -q "repo at serial 1 " "$D/boot.out"; then
      V[$n.g_boot]=$(mfield "$meas" wall)
      local boot_cpu
      boot_cpu=$(calc "$(mfield "$meas" user) + $(mfield "$meas" sys)")
      V[$n.g_cpu_us]=$(calc "$boot_cpu * 1000000 / $n")
      info "bootstrap (--once): ${V[$n.g_boot]} s, CPU $boot_cpu s, peak RSS $((boot_rss_kb >> 10)) MiB"
      start_daemon "$SUB_ID" "$BIN/mirrorcast-subscriber" --broker "$BROKER" --trust "$D/origin.pub" \
        --repo "$REPO" --tree "$w/mc-mirror" --state "$w/sub-state" --id "$SUB_ID" --no-trace-files --delete-delay 0 $TRANSPORT
      SUB_PID=$LAST_PID
      local deadline=$((SECONDS + 60))
      while ! grep -q "connected to broker" "$SUB_LOG" 2>/dev/null && kill -0 "$SUB_PID" 2>/dev/null &&
        ((SECONDS < deadline)); do sleep 0.05; done
      if grep -q "connected to broker" "$SUB_LOG" 2>/dev/null; then
        sleep 2 # the event subscription settles (PUB/SUB drops what precedes it)
        sub_ok=1
      else
        fail_step "$n" d_broker_full d_sub_full d_broker_paths d_sub_paths e_full e_paths -- \
          "subscriber daemon did not connect within 60 s: $(first_error "$SUB_LOG")"
      fi
    else
      fail_step "$n" g_boot g_cpu_us -- "bootstrap (--once) exit $rc: $(first_error "$D/boot.err")"
    fi
  fi

  # b-e. update rounds.
  local round kind seed list cpu_b0 cpu_s0 t_pub
  local l_find="" l_full="" l_scan="" l_paths="" l_bf="" l_sf="" l_bp="" l_sp="" l_ef="" l_ep=""
  local l_rf="" l_rp="" pub_broken=$((1 - first_ok))
  bounded "$BOUND_LONG" find "$ORIGIN" -printf '%s %T@\n' >/dev/null || die "find failed" # warm, untimed
  for ((round = 1; round <= ROUNDS; round++)); do
    for kind in full paths; do
      seed=$((100 + round * 2))
      [[ $kind == full ]] || seed=$((seed + 1))
      list=$D/changed-$kind.list
      bounded "$BOUND_LONG" "$GEN" update "$ORIGIN" --modify "$UPD_MODIFY" --add "$UPD_ADD" \
        --delete "$UPD_DELETE" --min "$MIN_BYTES" --max "$MAX_BYTES" --beside --list "$list" \
        --seed "$seed" >>"$LOGS/gen.log" 2>&1 || die "mirrorcast-bench-gen update failed (log: $LOGS/gen.log)"
      if [[ $kind == full ]]; then
        t0=$(now)
        bounded "$BOUND_LONG" find "$ORIGIN" -printf '%s %T@\n' >/dev/null || die "find failed"
        l_find+=" $(sub "$(now)" "$t0")"
      fi
      if ((!pub_broken)); then
        serial=$((serial + 1))
        if ((sub_ok)); then
          cpu_b0=$(proc_cpu "$BROKER_PID")
          cpu_s0=$(proc_cpu "$SUB_PID")
        fi
        t_pub=$(now)
        if [[ $kind == full ]]; then publish "$n" "$serial" && rc=0 || rc=1; else
          publish "$n" "$serial" --paths-from "$list" && rc=0 || rc=1
        fi
        if ((rc == 0)); then
          if [[ $kind == full ]]; then
            l_full+=" $PUB_SECONDS"
            l_scan+=" ${PUB_SCAN_SECONDS:-}"
          else
            l_paths+=" $PUB_SECONDS"
          fi
          if ((sub_ok)); then
            if wait_applied "$serial"; then
              sleep 0.5 # what the ACK handling and the apply's tail still cost
              local e cb cs
              e=$(sub "$APPLIED_AT" "$t_pub")
              cb=$(sub "$(proc_cpu "$BROKER_PID")" "$cpu_b0")
              cs=$(sub "$(proc_cpu "$SUB_PID")" "$cpu_s0")
              if [[ $kind == full ]]; then l_ef+=" $e" l_bf+=" $cb" l_sf+=" $cs"; else
                l_ep+=" $e" l_bp+=" $cb" l_sp+=" $cs"
              fi
              info "round $round $kind: publish $PUB_SECONDS s ($PUB_PHASES);" \
                "applied $(sub "$APPLIED_AT" "$PUB_ENDED") s after the publisher exited, $e s after it" \
                "started (subscriber: $(grep -E "applied repo=$REPO serial=$serial " "$SUB_LOG" |
                  sed -n -E 's/.*(seconds=[0-9.eE+-]+).*/apply \1/p' | head -n 1));" \
                "CPU broker $cb s, subscriber $cs s"
            else
              fail_step "$n" "e_$kind" "d_broker_$kind" "d_sub_$kind" -- "$APPLY_ERROR"
              sub_ok=0
            fi
          else
            info "round $round $kind: publish $PUB_SECONDS s ($PUB_PHASES)"
          fi
        else
          if [[ $kind == full ]]; then fail_step "$n" b_pub b_scan -- "update publish (full scan): $PUB_ERROR"; else
            fail_step "$n" c_paths -- "update publish (--paths-from): $PUB_ERROR"
          fi
          pub_broken=1 # the tree moved on without a serial: later --paths-from lists would miss it
        fi
      fi
      if ((!rs_broken)); then
        if rsync_pull "$BOUND_LONG" "$w/rs-mirror" -a --delete; then
          if [[ $kind == full ]]; then l_rf+=" $RS_SECONDS"; else l_rp+=" $RS_SECONDS"; fi
          info "round $round $kind: rsync -a --delete pull of the update $RS_SECONDS s" \
            "(client CPU $RS_CPU s, daemon CPU $RS_DAEMON_CPU s)"
        else
          fail_step "$n" "rs_$kind" -- "$RS_ERROR"
          rs_broken=1
        fi
      fi
    done
  done
  local k
  for k in find:l_find b_pub:l_full b_scan:l_scan c_paths:l_paths d_broker_full:l_bf d_sub_full:l_sf \
    d_broker_paths:l_bp d_sub_paths:l_sp e_full:l_ef e_paths:l_ep rs_full:l_rf rs_paths:l_rp; do
    local list_name=${k#*:} vals
    vals=$(median <<<"${!list_name}")
    [[ -z $vals ]] || V[$n.${k%%:*}]=$vals
  done

  # f. peak RSS.
  if ((first_ok)); then
    V[$n.f_broker]=$(proc_hwm_kb "$BROKER_PID")
  else
    skip_step "$n" "the broker never held the tree (first publish FAILED)" f_broker
  fi
  ((PUB_PEAK_KB == 0)) || V[$n.f_pub]=$PUB_PEAK_KB
  if [[ -n ${V[$n.g_boot]:-} ]]; then
    local sub_hwm=0
    [[ -z $SUB_PID ]] || sub_hwm=$(proc_hwm_kb "$SUB_PID")
    V[$n.f_sub]=$((boot_rss_kb > sub_hwm ? boot_rss_kb : sub_hwm))
    info "subscriber peak RSS: bootstrap $((boot_rss_kb >> 10)) MiB, daemon (updates) $((sub_hwm >> 10)) MiB"
  fi

  # Were the updates right? Identity of both mirrors with the origin.
  if [[ -n $SUB_PID ]] && ((sub_ok && !pub_broken)); then
    if [[ $(tree_listing "$ORIGIN") != "$(tree_listing "$w/mc-mirror")" ]]; then
      fail_step "$n" mirror_check -- "the mirrorcast mirror differs from the origin after serial $serial"
    else
      info "mirrorcast mirror matches the origin (names, types, sizes) at serial $serial"
    fi
  fi
  if ((!rs_broken)) && [[ $(tree_listing "$ORIGIN") != "$(tree_listing "$w/rs-mirror")" ]]; then
    fail_step "$n" mirror_check -- "the rsync mirror differs from the origin"
  fi
  local why="an earlier step FAILED"
  ((first_ok)) || why="the first publish FAILED"
  skip_step "$n" "$why" b_pub b_scan c_paths d_broker_full d_sub_full \
    d_broker_paths d_sub_paths e_full e_paths g_boot g_cpu_us f_sub

  t0=$SECONDS
  stop_all 15
  [[ -z $STOP_FAILURES ]] || info "stopped by force or failed:$STOP_FAILURES"
  t1=$SECONDS
  if [[ -n ${BENCH_KEEP:-} ]]; then info "(kept $w)"; else rm -rf "$w"; fi
  info "(stopped processes in $((t1 - t0)) s, removed the trees in $((SECONDS - t1)) s)"
}
ALL_KEYS=(a_wall a_cpu a_cores rs_init rs_init_cpu_us find b_pub b_scan c_paths d_broker_full
  d_sub_full d_broker_paths d_sub_paths e_full e_paths rs_full rs_paths f_broker f_pub f_sub g_boot
  g_cpu_us)
BOUND_LONG=600

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
fmt() { # VALUE UNIT
  case $2 in
    s) awk -v v="$1" 'BEGIN { printf (v < 10 ? "%.3f s" : "%.1f s"), v }' ;;
    kb) awk -v v="$1" 'BEGIN { printf "%.1f MiB", v / 1024 }' ;;
    us) awk -v v="$1" 'BEGIN { printf "%.1f us", v }' ;;
    x) awk -v v="$1" 'BEGIN { printf "%.2f", v }' ;;
    bpe) awk -v v="$1" 'BEGIN { printf "%.0f B/entry", v }' ;;
    *) printf '%s' "$1" ;;
  esac
}
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) { print "n/a"; exit }
    r = a / b; if (r < 0.001) printf "%.2e\n", r; else if (r < 10) printf "%.3f\n", r; else printf "%.1f\n", r }'
}
cell() { # SIZE KEY UNIT: formatted value, or FAILED / SKIPPED / -
  local v=${V[$1.$2]:-} f=${F[$1.$2]:-}
  if [[ -n $v ]]; then fmt "$v" "$3"
  elif [[ $f == FAILED* ]]; then printf 'FAILED'
  elif [[ $f == SKIPPED* ]]; then printf 'skipped'
  else printf -- '-'; fi
}
# verdict VALUE OP LIMIT: met / missed
verdict() { awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN { ok = (op == "<=" ? v <= l : v >= l); print (ok ? "met" : "missed") }'; }

TROWS=()
# row SIZE LABEL MC_KEY MC_UNIT REF_KEY REF_UNIT TARGET_ON(value|ratio|-) OP LIMIT TARGET_TEXT
row() {
  local n=$1 label=$2 mk=$3 mu=$4 rk=$5 ru=$6 on=$7 op=$8 lim=$9 ttext=${10}
  local mc rs r="-" v="-" mv=${V[$1.$3]:-} rv=""
  mc=$(cell "$n" "$mk" "$mu")
  if [[ $rk == - ]]; then rs=-; else
    rs=$(cell "$n" "$rk" "$ru")
    rv=${V[$n.$rk]:-}
    [[ -z $mv || -z $rv ]] || r=$(ratio "$mv" "$rv")
  fi
  case $on in
    value) [[ -z $mv ]] || v=$(verdict "$mv" "$op" "$lim") ;;
    ratio) [[ $r == - || $r == n/a ]] || v=$(verdict "$(calc "$mv / $rv")" "$op" "$lim") ;;
  esac
  [[ -z ${NOTE[$n.$mk]:-} || $v == - ]] || v="$v (${NOTE[$n.$mk]})"
  [[ -n $mv || -z ${NOTE[$n.$mk]:-} ]] || v="(${NOTE[$n.$mk]})"
  TROWS+=("$(short "$n")|$label|$mc|$rs|$r|$ttext|$v")
}
# growth rows between two sizes
grow_rss() { # N1 N2 KEY LABEL
  local a=${V[$1.$3]:-} b=${V[$2.$3]:-} per="-" note=""
  [[ -z $a || -z $b ]] || per=$(fmt "$(calc "($b - $a) * 1024 / ($2 - $1)")" bpe)
  [[ -z ${NOTE[$2.$3]:-}${NOTE[$1.$3]:-} ]] || note=" (${NOTE[$2.$3]:-${NOTE[$1.$3]:-}})"
  TROWS+=("$(short "$1")->$(short "$2")|f. $4 peak RSS growth per entry|$per|-|-|-|-$note")
}
grow_cpu() { # N1 N2 KEY LABEL: flat = big <= max(2 x small, small + 0.03 s)
  local a=${V[$1.$3]:-} b=${V[$2.$3]:-} r="-" v="-"
  if [[ -n $a && -n $b ]]; then
    r=$(ratio "$b" "$a")
    v=$(awk -v a="$a" -v b="$b" 'BEGIN { m = 2 * a; if (a + 0.03 > m) m = a + 0.03; print (b <= m ? "met" : "missed") }')
  fi
  TROWS+=("$(short "$1")->$(short "$2")|d. $4: big vs small size|$(cell "$2" "$3" s)|$(cell "$1" "$3" s)|$r|flat|$v")
}

machine() {
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit:  $(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "machine: nproc $(nproc) ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
  echo "memory:  $(free -h | awk '/^Mem:/ { print $2 " total, " $7 " available" }')"
  echo "disk:    work dir on $(df -hT "$D" | awk 'NR == 2 { print $2 " " $1 ", " $5 " free" }'), $(df -i "$D" | awk 'NR == 2 { print $4 }') inodes free"
  echo "rsync:   $("$RSYNC" --version | head -n 1)"
  echo "scale:   $SCALE, sizes: $SIZES files, $ROUNDS update rounds per size (medians)"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)"
}

report() {
  local n prev="" k
  TROWS=()
  for n in $SIZES; do
    row "$n" "a. first publish: wall vs rsync -a initial pull" a_wall s rs_init s - "" "" -
    row "$n" "a. first publish: publisher CPU user+sys" a_cpu s - - - "" "" -
    row "$n" "a. first publish: cores used (CPU / wall)" a_cores x - - value ">=" 1.5 ">= 1.5 (2 CPUs)"
    row "$n" "b. update, full stat scan: publish wall vs find -printf" b_pub s find s ratio "<=" 1.5 "ratio <= 1.5"
    row "$n" "b. same, its scan phase (publisher log) vs find -printf" b_scan s find s - "" "" -
    row "$n" "c. update, --paths-from: publish wall" c_paths s - - value "<=" 0.3 "<= 0.3 s"
    row "$n" "d. update, --paths-from: broker CPU" d_broker_paths s - - value "<=" 0.1 "<= 0.1 s"
    row "$n" "d. update, --paths-from: subscriber CPU" d_sub_paths s - - value "<=" 0.1 "<= 0.1 s"
    row "$n" "d. update, full scan: broker CPU" d_broker_full s - - value "<=" 0.1 "<= 0.1 s"
    row "$n" "d. update, full scan: subscriber CPU" d_sub_full s - - value "<=" 0.1 "<= 0.1 s"
    row "$n" "e. publish start -> applied, --paths-from vs rsync -a --delete" e_paths s rs_paths s ratio "<=" 0.1 "ratio <= 0.1"
    row "$n" "e. publish start -> applied, full scan vs rsync -a --delete" e_full s rs_full s ratio "<=" 0.6 "ratio <= 0.6"
    row "$n" "f. peak RSS: broker" f_broker kb - - value "<=" 262144 "<= 256 MiB"
    row "$n" "f. peak RSS: publisher" f_pub kb - - value "<=" 262144 "<= 256 MiB"
    row "$n" "f. peak RSS: subscriber (bootstrap or daemon)" f_sub kb - - value "<=" 262144 "<= 256 MiB"
    row "$n" "g. bootstrap empty mirror: wall vs rsync -a initial pull" g_boot s rs_init s - "" "" -
    row "$n" "g. bootstrap: subscriber CPU per file vs rsync receiver" g_cpu_us us rs_init_cpu_us us - "" "" -
  done
  for n in $SIZES; do
    if [[ -n $prev ]]; then
      grow_cpu "$prev" "$n" d_broker_paths "broker CPU per update (--paths-from)"
      grow_cpu "$prev" "$n" d_sub_paths "subscriber CPU per update (--paths-from)"
      grow_rss "$prev" "$n" f_broker broker
      grow_rss "$prev" "$n" f_pub publisher
      grow_rss "$prev" "$n" f_sub subscriber
    fi
    prev=$n
  done
  {
    echo "mirrorcast scale benchmark (ratio = mirrorcast / baseline; below 1 favours mirrorcast)"
    machine
    echo "total:   $((SECONDS - START)) s"
    echo
    printf '%s\n' "size|figure|mirrorcast|baseline|ratio|target|verdict" "${TROWS[@]}" |
      awk -F'|' '{ for (i = 1; i <= NF; i++) { cell[NR, i] = $i
                     if (length($i) > w[i]) w[i] = length($i) } }
        END { for (r = 1; r <= NR; r++) {
                line = ""
                for (i = 1; i <= 7; i++) line = line sprintf("%-" w[i] "s", cell[r, i]) (i < 7 ? "  " : "")
                sub(/ +$/, "", line); print line
                if (r == 1) { line = ""; for (i = 1; i <= 7; i++) { s = sprintf("%" w[i] "s", "")
                  gsub(/ /, "-", s); line = line s (i < 7 ? "  " : "") } print line } } }'
    # One line per size and message, naming the cells it emptied.
    local notes=() f
    for n in $SIZES; do
      for k in "${ALL_KEYS[@]}" mirror_check; do
        f=${F[$n.$k]:-}
        [[ -z $f ]] || notes+=("$(short "$n")|$k|$f")
      done
    done
    if ((${#notes[@]} > 0)); then
      echo
      echo "failed and skipped cells (FAILED: the first error line):"
      printf '%s\n' "${notes[@]}" | awk -F'|' '
        { key = $1 "|" $3; if (!(key in keys)) { order[++n] = key; keys[key] = $2 } else keys[key] = keys[key] " " $2 }
        END { for (i = 1; i <= n; i++) { split(order[i], p, "|"); print "  " p[1] " (" keys[order[i]] "): " p[2] } }'
    fi
  } >"$RESULTS_FILE"
  echo
  cat "$RESULTS_FILE"
  echo
  echo "(written to $RESULTS_FILE)"
  TABLE_PRINTED=1
}

# ---------------------------------------------------------------------------
say "scale benchmark, work directory $D"
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
  echo "some steps FAILED (see above); the figures that could be measured are in the table"
  exit 1
}
