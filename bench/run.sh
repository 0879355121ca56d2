#!/usr/bin/env bash
# mirrorcast benchmarks against rsync, side by side in one run (make bench):
#
#   bash bench/run.sh BUILD_DIR [delta] [idle] [fanout] [publish] [acks] [scale] [relay]
#
# With no names, all seven run, in that order:
#   delta    bytes on the wire for a changed large file (1% changed in 8 places)
#   idle     work when nothing changed: bytes read and time (rsync -c, rsync)
#   fanout   propagation of one update to N mirrors vs N parallel rsync pulls
#   publish  publish time on a large tree with 10 changed files vs `find` (floor)
#   acks     broker fan-out and ACK throughput with hundreds of subscribers
#   scale    the same scenario at 100k and 1M files (small: 10k, 50k), each vs
#            rsync: bench/scale.sh, which prints its own table (also written to
#            BUILD_DIR/bench-scale-results.txt); 10-30 min at full scale
#   relay    one origin, 2 relays, 3 mirrors per relay vs the same 6 mirrors fed
#            by the origin and vs an rsync hub-and-spoke: origin egress, time
#            to the last mirror and origin CPU for a 1% update, at 10k and 100k
#            files (small: 2k, 10k): bench/relay.sh, which prints its own table
#            (also BUILD_DIR/bench-relay-results.txt; BENCH_RELAYS,
#            BENCH_MIRRORS_PER_RELAY); about 10 min at full scale
#
# Environment:
#   BENCH_SCALE=small    quick run with small trees (default: full)
#   BENCH_DIR=DIR        where the work directory is made (default: $TMPDIR or /tmp)
#   BENCH_KEEP=1         keep the work directory (trees, logs) afterwards
#   BENCH_FANOUT_N="10 25"  mirror counts for `fanout` (default: "10 25"; small: 3)
#   BENCH_ACK_SUBSCRIBERS=N subscribers for `acks` (default: 200; small: 20)
#
# Everything talks to 127.0.0.1 only; nothing is downloaded. mirrorcast runs
# as the real programs (broker, publisher, subscribers); rsync runs against a
# local rsync daemon, so both go over TCP. Every process started is stopped on
# every exit path. Ratios are mirrorcast / rsync: below 1 favours mirrorcast.
# Results go to stdout and to BUILD_DIR/bench-results.txt.
set -euo pipefail

BUILD_DIR=${1:-build}
shift || true
ALL_BENCHES=(delta idle fanout publish acks scale relay)
if (($# > 0)); then SELECTED=("$@"); else SELECTED=("${ALL_BENCHES[@]}"); fi
for name in "${SELECTED[@]}"; do
  [[ " ${ALL_BENCHES[*]} " == *" $name "* ]] || {
    echo "unknown benchmark '$name' (known: ${ALL_BENCHES[*]})" >&2
    exit 2
  }
done

SCALE=${BENCH_SCALE:-full}
case $SCALE in
  full)
    BIG_BYTES=$((200 * 1024 * 1024))  # delta: the large file
    MID_SMALL=20000                   # idle, fanout: packages
    MID_LARGE=2                       # idle, fanout: images of MID_LARGE_BYTES
    MID_LARGE_BYTES=$((64 * 1024 * 1024))
    HUGE_SMALL=100000                 # publish: files in the large tree
    FANOUT_N=${BENCH_FANOUT_N:-"10 25"}
    ACK_SUBS=${BENCH_ACK_SUBSCRIBERS:-200}
    ;;
  small)
    BIG_BYTES=$((20 * 1024 * 1024))
    MID_SMALL=2000
    MID_LARGE=1
    MID_LARGE_BYTES=$((8 * 1024 * 1024))
    HUGE_SMALL=10000
    FANOUT_N=${BENCH_FANOUT_N:-3}
    ACK_SUBS=${BENCH_ACK_SUBSCRIBERS:-20}
    ;;
  *)
    echo "BENCH_SCALE must be full or small" >&2
    exit 2
    ;;
esac
DELTA_REGIONS=8
DELTA_REGION_BYTES=$((BIG_BYTES / 100 / DELTA_REGIONS))  # 1% of the file in 8 places
FANOUT_MODIFY=50 FANOUT_ADD=150 FANOUT_DELETE=20           # + regenerated repodata/
PUBLISH_CHANGED=10
PUBLISH_ROUNDS=3
APPLY_TIMEOUT=300

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
# The benchmarks measure the protocol and the apply path on loopback, as the
# figures in docs/benchmarks.md always did: without CURVE (a lab setting; the
# demo and the integration tests run over CURVE).
TRANSPORT=--insecure-plaintext
RSYNC=$(command -v rsync) || die "rsync is not installed (apt-get install rsync)"
command -v ss >/dev/null || die "ss is not installed (apt-get install iproute2)"
RESULTS_FILE=$(cd "$BUILD_DIR" && pwd)/bench-results.txt

D=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/mirrorcast-bench.XXXXXX")
LOGS=$D/logs
mkdir -p "$LOGS"
ulimit -n 65536 2>/dev/null || true # hundreds of subscribers: the broker needs fds

# ---------------------------------------------------------------------------
# Processes: every daemon is stopped on every exit path.
# ---------------------------------------------------------------------------
# shellcheck source=../deploy/lib/daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/lib/daemons.sh"

# Names are used once per run (rsyncd excepted): logs and state directories
# are named after them, and a reused broker state would carry old serials.
start_named_daemon() { # NAME PROGRAM ARGS...; sets LAST_PID
  [[ $1 == rsyncd || ! -e $LOGS/$1.log ]] || die "daemon name $1 used twice"
  start_daemon "$@"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all 15 || true
  [[ -z $STOP_FAILURES ]] || echo "stopped by force or failed:$STOP_FAILURES"
  if ((rc != 0)); then
    echo "---- last lines of the logs ($LOGS) ----"
    local f
    for f in $(ls -t "$LOGS"/*.log 2>/dev/null | head -n 6); do
      echo "-- ${f##*/}"
      tail -n 10 "$f" | sed 's/^/   /'
    done
  fi
  if [[ -n ${BENCH_KEEP:-} ]]; then echo "(kept $D)"; else rm -rf "$D"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# ---------------------------------------------------------------------------
# Arithmetic and formatting (awk: bash has integers only)
# ---------------------------------------------------------------------------
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
human_bytes() {
  awk -v n="$1" 'BEGIN {
    split("B KiB MiB GiB TiB", u, " "); i = 1
    while (n >= 1024 && i < 5) { n /= 1024; i++ }
    printf (i == 1 ? "%d %s" : "%.2f %s"), n, u[i] }'
}
fmt_value() { # VALUE UNIT
  case $2 in
    bytes) human_bytes "$1" ;;
    s) awk -v v="$1" 'BEGIN { printf (v < 10 ? "%.3f s" : "%.1f s"), v }' ;;
    per_s) awk -v v="$1" 'BEGIN { printf "%.0f /s", v }' ;;
    *) printf '%s' "$1" ;;
  esac
}
ratio() { # MIRRORCAST RSYNC
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (b == 0) { print "n/a"; exit }
    r = a / b
    if (r == 0) print "0"
    else if (r < 0.001) printf "%.2e\n", r
    else if (r < 10) printf "%.3f\n", r
    else printf "%.1f\n", r }'
}

# Results: one row per measured figure.
ROWS=()
result() { # BENCH MEASURE MIRRORCAST RSYNC UNIT  (RSYNC may be '-')
  local mc rs r
  mc=$(fmt_value "$3" "$5")
  if [[ $4 == - ]]; then
    rs=-
    r=-
  else
    rs=$(fmt_value "$4" "$5")
    r=$(ratio "$3" "$4")
  fi
  ROWS+=("$1|$2|$mc|$rs|$r")
  info "RESULT $1: $2: mirrorcast $mc, baseline $rs, ratio $r"
}

# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------
# Runs a command in a subshell and writes that subshell's /proc/PID/io to
# IOFILE afterwards: once the command has been reaped, its I/O counts are
# folded into its parent's, so rchar is what the command (and its children)
# read. Keeps the command's exit status.
io_run() { # IOFILE COMMAND...
  local iofile=$1
  shift
  (
    rc=0
    "$@" || rc=$?
    cat "/proc/$BASHPID/io" >"$iofile"
    exit "$rc"
  )
}
io_field() { awk -v k="$2:" '$1 == k { print $2 }' "$1"; } # IOFILE FIELD
proc_io() {                                                 # PID FIELD: a live process's counter
  awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/io" 2>/dev/null || echo 0
}

# TCP payload bytes (acked sent + received) over every socket of PID now,
# from ss's tcp_info. Counts only connections that are open: the subscriber
# keeps its control, event and content connections for its whole life.
tcp_bytes() { # PID
  ss -tinpH state established 2>/dev/null | awk -v pid="pid=$1," '
    /users:\(\(/ { mine = index($0, pid) > 0; next }
    mine {
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^bytes_acked:/) { split($i, a, ":"); total += a[2] }
        if ($i ~ /^bytes_received:/) { split($i, a, ":"); total += a[2] }
      }
      mine = 0
    }
    END { printf "%d\n", total }'
}

# Epoch seconds of a log timestamp (2026-01-02T03:04:05.123456, local time).
log_epoch() {
  [[ $1 =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+$ ]] || die "not a log timestamp: '$1'"
  date -d "$1" +%s.%N
}

# ---------------------------------------------------------------------------
# mirrorcast programs
# ---------------------------------------------------------------------------
KEY_MADE=0
make_key() {
  ((KEY_MADE)) && return 0
  "$BIN/mirrorcast" keygen --out "$D/origin" >>"$LOGS/keygen.log" 2>&1 ||
    die "mirrorcast keygen failed (log: $LOGS/keygen.log)"
  KEY_MADE=1
}

start_broker() { # NAME TREE_ROOT -> BROKER (host:port), BROKER_PID, BROKER_LOG
  local name=$1 root=$2 deadline
  rm -f "$D/$name.port"
  start_named_daemon "$name" "$BIN/mirrorcast-broker" --listen 127.0.0.1:0 --port-file "$D/$name.port" \
    --state "$D/$name-state" --tree-root "$root" --trust "$D/origin.pub" $TRANSPORT
  BROKER_PID=$LAST_PID
  BROKER_LOG=$LOGS/$name.log
  deadline=$((SECONDS + 20))
  while [[ ! -s $D/$name.port ]]; do
    check_alive
    ((SECONDS < deadline)) || die "broker wrote no --port-file within 20 s"
    sleep 0.05
  done
  sleep 0.05
  BROKER=$(tr -d '[:space:]' <"$D/$name.port")
  [[ $BROKER =~ ^127\.0\.0\.1:[0-9]+$ ]] || die "unexpected port file content: '$BROKER'"
}

# Runs one publish; PUBLISH_OUT gets its stdout, PUBLISH_SECONDS its wall time,
# PUBLISH_IO the file with its /proc io counters.
publish() { # REPO TREE STATE_DIR
  local t0 t1 out=$D/publish.out
  PUBLISH_IO=$D/publish.io
  t0=$(now)
  if ! io_run "$PUBLISH_IO" timeout 600 "$BIN/mirrorcast-publish" --broker "$BROKER" \
    --key "$D/origin.key" --repo "$1" --tree "$2" --state "$3" $TRANSPORT >"$out" \
    2>>"$LOGS/publish.log"; then
    die "mirrorcast-publish failed (log: $LOGS/publish.log)"
  fi
  t1=$(now)
  PUBLISH_SECONDS=$(sub "$t1" "$t0")
  PUBLISH_OUT=$(cat "$out")
  cat "$out" >>"$LOGS/publish.log"
}
expect_published() { # SERIAL: the last publish must have made exactly this serial
  [[ $PUBLISH_OUT == *"published repo="*" serial=$1 "* ]] ||
    die "expected a publish of serial $1, got: $PUBLISH_OUT"
}
scan_field() { sed -n -E "s/.*$1=([0-9]+).*/\\1/p" <<<"$PUBLISH_OUT" | head -n 1; }

# `mirrorcast status --json` as one object per line (nlohmann's compact dump
# has no nested objects inside a mirror entry).
status_objects() {
  timeout 20 "$BIN/mirrorcast" status --broker "$BROKER" --json $TRANSPORT 2>>"$LOGS/status.log" |
    tr -d '\n' | grep -o '{[^{}]*}' || true
}
json_num() { sed -n -E 's/.*[{,]"'"$2"'":([0-9.eE+-]+)[,}].*/\1/p' <<<"$1"; } # OBJECT KEY

# How many mirrors report `applied` at serial >= SERIAL.
count_applied() { # SERIAL
  status_objects | awk -v want="$1" '
    /"mirror_id"/ && /"state":"applied"/ {
      if (match($0, /[{,]"serial":[0-9]+/)) {
        s = substr($0, RSTART, RLENGTH); sub(/.*:/, "", s)
        if (s + 0 >= want) n++
      }
    }
    END { print n + 0 }'
}

wait_applied() { # SERIAL COUNT
  local deadline=$((SECONDS + APPLY_TIMEOUT)) n=0 next_report=$((SECONDS + 10))
  while :; do
    check_alive
    n=$(count_applied "$1")
    ((n >= $2)) && return 0
    ((SECONDS < deadline)) || die "only $n of $2 mirrors applied serial $1 within ${APPLY_TIMEOUT}s"
    if ((SECONDS >= next_report)); then
      info "waiting: $n of $2 mirrors at serial $1"
      next_report=$((SECONDS + 10))
    fi
    sleep 0.2
  done
}

# Broker log: timestamps of the applied ACKs for SERIAL, sorted.
ack_times() { # SERIAL
  grep -E " ack mirror=.* serial=$1 state=ACK_APPLIED" "$BROKER_LOG" | awk '{ print $1 }' | sort
}

start_subscriber() { # NAME REPO TREE
  start_named_daemon "$1" "$BIN/mirrorcast-subscriber" --broker "$BROKER" --trust "$D/origin.pub" \
    --repo "$2" --tree "$3" --state "$D/$1-state" --id "$1" --no-trace-files --delete-delay 0 $TRANSPORT
  SUB_PID=$LAST_PID
}

# ---------------------------------------------------------------------------
# rsync daemon on 127.0.0.1 serving one module, "origin"
# ---------------------------------------------------------------------------
start_rsyncd() { # PATH -> RSYNC_URL, RSYNCD_PID
  local path=$1 port conf=$D/rsyncd.conf attempt deadline
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$((20000 + (RANDOM * 7 + attempt) % 40000))
    if ss -ltnH "sport = :$port" | grep -q .; then continue; fi
    cat >"$conf" <<EOF
use chroot = no
uid = root
gid = root
address = 127.0.0.1
max connections = 0
log file = $LOGS/rsyncd-transfers.log
[origin]
  path = $path
  read only = yes
EOF
    start_named_daemon rsyncd "$RSYNC" --daemon --no-detach --config="$conf" --address=127.0.0.1 \
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
  die "could not start an rsync daemon on 127.0.0.1 (log: $LOGS/rsyncd.log)"
}

# rsync --stats: "Total bytes sent: 1,234" (client side) + received.
rsync_wire() { # STATS_FILE
  awk '/^Total bytes sent:/ || /^Total bytes received:/ { gsub(/,/, "", $4); n += $4 }
    END { printf "%d\n", n }' "$1"
}

# Name, size and type of everything below a tree, for a cheap identity check
# (mirrorcast verifies every SHA-256 itself; rsync's own checks are per file).
tree_listing() {
  (cd "$1" && find . \( -name .mirrorcast-staging -prune \) -o \( -type d -printf '%P d\n' \) -o \
    -printf '%P %y %s\n' |
    LC_ALL=C sort | md5sum | cut -d' ' -f1)
}
check_same_tree() { # ORIGIN MIRROR
  [[ $(tree_listing "$1") == "$(tree_listing "$2")" ]] || die "$2 differs from $1"
}

# A mirror that starts identical to the origin, as hard links: cheap, and safe
# because the generator, mirrorcast and rsync all replace files by rename,
# never in place. Done before the first publish: a new link changes the
# inode's ctime, which is part of the publisher's hash-cache key.
seed_mirror() { cp -al "$1" "$2"; } # ORIGIN MIRROR

# Stops the benchmark's processes and removes its trees, saying how long it took.
finish_bench() { # WORKDIR
  local t0=$SECONDS
  stop_all
  local t1=$SECONDS
  rm -rf "$1"
  info "(stopped processes in $((t1 - t0)) s, removed $1 in $((SECONDS - t1)) s)"
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# ---------------------------------------------------------------------------
# 1. delta: bytes on the wire for a changed large file
# ---------------------------------------------------------------------------
bench_delta() {
  local w=$D/delta origin file old_sig tcp0 tcp1 t0 t1 tmc line fetched reused rs_wire
  local rs_seconds changed
  say "delta: a $(human_bytes "$BIG_BYTES") file with 1% changed in $DELTA_REGIONS places"
  origin=$w/root/big
  "$GEN" tree "$origin" --small 50 --large 1 --large-bytes "$BIG_BYTES" --seed 11 >/dev/null
  file=isos/image-0.iso
  seed_mirror "$origin" "$w/mc-mirror"
  seed_mirror "$origin" "$w/rs-mirror"
  seed_mirror "$origin" "$w/rs-fsync-mirror"
  start_broker delta-broker "$w/root"
  publish big "$origin" "$w/pub-state"
  start_subscriber delta-mirror big "$w/mc-mirror"
  local sub_pid=$SUB_PID
  wait_applied 1 1
  old_sig=$("$GEN" sigsize "$w/mc-mirror/$file")
  changed=$("$GEN" mutate "$origin/$file" --regions "$DELTA_REGIONS" \
    --region-bytes "$DELTA_REGION_BYTES" --seed 12 | sed -n 's/changed_bytes=//p')
  info "changed $(human_bytes "$changed") of $file; the mirror's librsync signature is $(human_bytes "$old_sig")"

  tcp0=$(tcp_bytes "$sub_pid")
  t0=$(now)
  publish big "$origin" "$w/pub-state"
  expect_published 2
  info "publish (hashes the changed file): $PUBLISH_SECONDS s"
  wait_applied 2 1
  t1=$(log_epoch "$(ack_times 2 | tail -n 1)")
  tcp1=$(tcp_bytes "$sub_pid")
  tmc=$(sub "$t1" "$t0")
  line=$(status_objects | grep '"mirror_id":"delta-mirror"')
  fetched=$(json_num "$line" bytes_fetched)
  reused=$(json_num "$line" bytes_reused)
  grep -E 'applied repo=big serial=2' "$LOGS/delta-mirror.log" | tail -n 1 | sed 's/^/    subscriber: /'
  check_same_tree "$origin" "$w/mc-mirror"
  cmp -s "$origin/$file" "$w/mc-mirror/$file" || die "mirrorcast mirror's $file differs"

  start_rsyncd "$origin"
  t0=$(now)
  "$RSYNC" -a --delete --stats "$RSYNC_URL" "$w/rs-mirror/" >"$D/rsync-delta.stats" 2>>"$LOGS/rsync.log" ||
    die "rsync failed (log: $LOGS/rsync.log)"
  t1=$(now)
  rs_seconds=$(sub "$t1" "$t0")
  rs_wire=$(rsync_wire "$D/rsync-delta.stats")
  grep -E '^(Total bytes|Literal data|Matched data)' "$D/rsync-delta.stats" | sed 's/^/    rsync: /'
  cmp -s "$origin/$file" "$w/rs-mirror/$file" || die "rsync mirror's $file differs"
  # mirrorcast fsyncs what it applies (an ACK means durable); rsync does not
  # unless asked, so the same pull again with --fsync.
  t0=$(now)
  "$RSYNC" -a --delete --fsync "$RSYNC_URL" "$w/rs-fsync-mirror/" 2>>"$LOGS/rsync.log" ||
    die "rsync --fsync failed (log: $LOGS/rsync.log)"
  t1=$(now)
  local rs_fsync_seconds
  rs_fsync_seconds=$(sub "$t1" "$t0")
  cmp -s "$origin/$file" "$w/rs-fsync-mirror/$file" || die "rsync --fsync mirror's $file differs"
  info "mirrorcast: bytes_fetched=$fetched signature=$old_sig tcp_payload=$((tcp1 - tcp0)) reused=$reused"

  result delta "wire bytes, TCP payload both ways (mc) vs rsync --stats sent+received" \
    "$((tcp1 - tcp0))" "$rs_wire" bytes
  result delta "wire bytes, bytes_fetched + signature sent (mc app count)" \
    "$((fetched + old_sig))" "$rs_wire" bytes
  result delta "time: publish start -> mirror applied (mc) vs rsync pull" "$tmc" "$rs_seconds" s
  result delta "time: same, vs rsync --fsync pull" "$tmc" "$rs_fsync_seconds" s
  finish_bench "$w"
}

# ---------------------------------------------------------------------------
# 2. idle: work when nothing changed
# ---------------------------------------------------------------------------
bench_idle() {
  local w=$D/idle origin sub_r0 sub_r1 broker_r0 broker_r1 d0 d1 t0 t1 hashed pub_rchar
  local pub_seconds rsc_seconds rsc_client rsc_daemon rs_seconds rs_client rs_daemon tree_bytes
  say "idle: nothing changed ($MID_SMALL packages + $MID_LARGE images of $(human_bytes "$MID_LARGE_BYTES"))"
  origin=$w/root/idle
  "$GEN" tree "$origin" --small "$MID_SMALL" --large "$MID_LARGE" \
    --large-bytes "$MID_LARGE_BYTES" --seed 21 | sed 's/^/    generated: /'
  tree_bytes=$(du -sb "$origin" | cut -f1)
  seed_mirror "$origin" "$w/mc-mirror"
  seed_mirror "$origin" "$w/rs-mirror"
  start_broker idle-broker "$w/root"
  publish idle "$origin" "$w/pub-state"
  info "first publish (hashes everything): $PUBLISH_SECONDS s, $(head -n 1 <<<"$PUBLISH_OUT")"
  start_subscriber idle-mirror idle "$w/mc-mirror"
  local sub_pid=$SUB_PID
  wait_applied 1 1
  sleep 1

  # mirrorcast: the publisher runs (release tooling calls it), finds nothing.
  sub_r0=$(proc_io "$sub_pid" rchar)
  broker_r0=$(proc_io "$BROKER_PID" rchar)
  publish idle "$origin" "$w/pub-state"
  sleep 1 # a subscriber would react within this second if anything were sent
  sub_r1=$(proc_io "$sub_pid" rchar)
  broker_r1=$(proc_io "$BROKER_PID" rchar)
  pub_seconds=$PUBLISH_SECONDS
  hashed=$(scan_field hashed_bytes)
  pub_rchar=$(io_field "$PUBLISH_IO" rchar)
  info "publisher: $(tr '\n' ' ' <<<"$PUBLISH_OUT")"
  info "publisher read $pub_rchar bytes in all (state, key, libraries), hashed $hashed tree bytes;" \
    "subscriber read $((sub_r1 - sub_r0)), broker $((broker_r1 - broker_r0))"
  [[ $PUBLISH_OUT == *"nothing changed"* ]] || die "the unchanged tree was published again"

  start_rsyncd "$origin"
  d0=$(proc_io "$RSYNCD_PID" rchar)
  t0=$(now)
  io_run "$D/rsync-c.io" "$RSYNC" -a -c --delete --stats "$RSYNC_URL" "$w/rs-mirror/" \
    >"$D/rsync-c.stats" 2>>"$LOGS/rsync.log" || die "rsync -c failed (log: $LOGS/rsync.log)"
  t1=$(now)
  sleep 0.3 # the daemon reaps its per-connection child, adding its I/O counts
  d1=$(proc_io "$RSYNCD_PID" rchar)
  rsc_seconds=$(sub "$t1" "$t0")
  rsc_client=$(io_field "$D/rsync-c.io" rchar)
  rsc_daemon=$((d1 - d0))
  info "rsync -c: daemon read $rsc_daemon, client read $rsc_client (tree: $tree_bytes bytes)"

  d0=$(proc_io "$RSYNCD_PID" rchar)
  t0=$(now)
  io_run "$D/rsync.io" "$RSYNC" -a --delete --stats "$RSYNC_URL" "$w/rs-mirror/" \
    >"$D/rsync.stats" 2>>"$LOGS/rsync.log" || die "rsync failed (log: $LOGS/rsync.log)"
  t1=$(now)
  sleep 0.3
  d1=$(proc_io "$RSYNCD_PID" rchar)
  rs_seconds=$(sub "$t1" "$t0")
  rs_client=$(io_field "$D/rsync.io" rchar)
  rs_daemon=$((d1 - d0))
  info "rsync (no -c): daemon read $rs_daemon, client read $rs_client"

  result idle "tree bytes read: publisher hashed_bytes vs rsync -c (daemon+client rchar)" \
    "$hashed" "$((rsc_daemon + rsc_client))" bytes
  result idle "all bytes read: publisher+broker+subscriber rchar vs rsync -c rchar" \
    "$((pub_rchar + sub_r1 - sub_r0 + broker_r1 - broker_r0))" "$((rsc_daemon + rsc_client))" bytes
  result idle "all bytes read: same, vs rsync pull without -c (rchar)" \
    "$((pub_rchar + sub_r1 - sub_r0 + broker_r1 - broker_r0))" "$((rs_daemon + rs_client))" bytes
  result idle "time: publish (nothing changed) vs rsync -c pull" "$pub_seconds" "$rsc_seconds" s
  result idle "time: publish (nothing changed) vs rsync pull (stat only)" "$pub_seconds" "$rs_seconds" s
  result idle "wire bytes: rsync pull without -c (file list), mirrorcast sends nothing" \
    0 "$(rsync_wire "$D/rsync.stats")" bytes
  finish_bench "$w"
}

# ---------------------------------------------------------------------------
# 3. fanout: propagation of one update to N mirrors
# ---------------------------------------------------------------------------
bench_fanout_n() { # N
  local n=$1 w=$D/fanout-$1 origin i t0 t1 tmc pids rs_seconds first last mc_wire rs_wire
  say "fanout: one update ($FANOUT_MODIFY changed, $FANOUT_ADD added, $FANOUT_DELETE deleted" \
    "packages + repodata/) to $n mirrors"
  origin=$w/root/fan
  "$GEN" tree "$origin" --small "$MID_SMALL" --large "$MID_LARGE" \
    --large-bytes "$MID_LARGE_BYTES" --seed 31 | sed 's/^/    generated: /'
  for ((i = 1; i <= n; i++)); do
    seed_mirror "$origin" "$w/mc-$i"
    seed_mirror "$origin" "$w/rs-$i"
    seed_mirror "$origin" "$w/rsf-$i"
  done
  start_broker "fanout$n-broker" "$w/root"
  publish fan "$origin" "$w/pub-state"
  for ((i = 1; i <= n; i++)); do start_subscriber "fan$n-mirror-$i" fan "$w/mc-$i"; done
  wait_applied 1 "$n"
  sleep 1 # event subscriptions settle (PUB/SUB drops what precedes them)
  "$GEN" update "$origin" --modify "$FANOUT_MODIFY" --add "$FANOUT_ADD" --delete "$FANOUT_DELETE" \
    --seed 32 | sed 's/^/    update: /'

  t0=$(now)
  publish fan "$origin" "$w/pub-state"
  expect_published 2
  info "publisher: $(tr '\n' ' ' <<<"$PUBLISH_OUT") ($PUBLISH_SECONDS s)"
  wait_applied 2 "$n"
  (($(ack_times 2 | wc -l) == n)) || die "not $n applied ACKs for serial 2 in the broker log"
  first=$(log_epoch "$(ack_times 2 | head -n 1)")
  last=$(log_epoch "$(ack_times 2 | tail -n 1)")
  tmc=$(sub "$last" "$t0")
  info "mirrorcast: first mirror applied after $(sub "$first" "$t0") s, all $n after $tmc s;" \
    "apply seconds per mirror (ACK): $(status_objects | awk '/"mirror_id"/ {
      if (match($0, /"seconds":[0-9.eE+-]+/)) { s = substr($0, RSTART, RLENGTH); sub(/.*:/, "", s)
        printf "%.2f ", s } }')"
  mc_wire=$(status_objects | awk '/"mirror_id"/ { if (match($0, /"bytes_fetched":[0-9]+/)) {
      s = substr($0, RSTART, RLENGTH); sub(/.*:/, "", s); n += s } } END { printf "%d\n", n }')

  start_rsyncd "$origin"
  pids=()
  t0=$(now)
  for ((i = 1; i <= n; i++)); do
    "$RSYNC" -a --delete --stats "$RSYNC_URL" "$w/rs-$i/" >"$D/rsync-fan-$i.stats" \
      2>>"$LOGS/rsync.log" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || die "an rsync pull failed (log: $LOGS/rsync.log)"; done
  t1=$(now)
  rs_seconds=$(sub "$t1" "$t0")
  rs_wire=0
  for ((i = 1; i <= n; i++)); do rs_wire=$((rs_wire + $(rsync_wire "$D/rsync-fan-$i.stats"))); done
  info "rsync: $n parallel pulls done after $rs_seconds s"
  pids=()
  t0=$(now)
  for ((i = 1; i <= n; i++)); do
    "$RSYNC" -a --delete --fsync "$RSYNC_URL" "$w/rsf-$i/" 2>>"$LOGS/rsync.log" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || die "an rsync --fsync pull failed (log: $LOGS/rsync.log)"; done
  local rs_fsync_seconds
  rs_fsync_seconds=$(sub "$(now)" "$t0")
  info "rsync --fsync: $n parallel pulls done after $rs_fsync_seconds s"
  for ((i = 1; i <= n; i++)); do
    check_same_tree "$origin" "$w/mc-$i"
    check_same_tree "$origin" "$w/rs-$i"
    check_same_tree "$origin" "$w/rsf-$i"
  done

  result "fanout N=$n" "time: publish start -> all mirrors applied vs $n parallel rsync pulls" \
    "$tmc" "$rs_seconds" s
  result "fanout N=$n" "time: same, vs $n parallel rsync --fsync pulls" "$tmc" "$rs_fsync_seconds" s
  result "fanout N=$n" "wire bytes, all mirrors: sum bytes_fetched vs rsync sent+received" \
    "$mc_wire" "$rs_wire" bytes
  finish_bench "$w"
}
bench_fanout() {
  local n
  for n in $FANOUT_N; do bench_fanout_n "$n"; done
}

# ---------------------------------------------------------------------------
# 4. publish: publish time on a large tree with few changes vs the floor
# ---------------------------------------------------------------------------
bench_publish() {
  local w=$D/publish origin round t0 t1 pub_times="" scan_times="" find_times="" scan
  say "publish: $HUGE_SMALL files, $PUBLISH_CHANGED rewritten, vs a stat-only find (median of $PUBLISH_ROUNDS)"
  origin=$w/root/huge
  t0=$(now)
  "$GEN" tree "$origin" --small "$HUGE_SMALL" --min 512 --max 8192 --seed 41 |
    sed 's/^/    generated: /'
  info "generated in $(sub "$(now)" "$t0") s"
  start_broker publish-broker "$w/root"
  publish huge "$origin" "$w/pub-state"
  info "first publish (hashes everything): $PUBLISH_SECONDS s"
  for ((round = 1; round <= PUBLISH_ROUNDS; round++)); do
    t0=$(now)
    find "$origin" -printf '%s %T@\n' >/dev/null
    t1=$(now)
    find_times+=" $(sub "$t1" "$t0")"
    "$GEN" update "$origin" --modify "$PUBLISH_CHANGED" --no-repodata --seed $((41 + round)) \
      >/dev/null
    publish huge "$origin" "$w/pub-state"
    [[ $PUBLISH_OUT == *"changes=$PUBLISH_CHANGED "* ]] ||
      die "expected $PUBLISH_CHANGED changes, got: $PUBLISH_OUT"
    pub_times+=" $PUBLISH_SECONDS"
    scan=$(grep -E 'scanned repo=huge mode=full' "$LOGS/publish.log" | tail -n 1 |
      sed -n -E 's/.* seconds=([0-9.eE+-]+).*/\1/p')
    scan_times+=" $scan"
    info "round $round: find $(awk '{ print $NF }' <<<"$find_times") s, publish $PUBLISH_SECONDS s" \
      "(scan $scan s): $(head -n 1 <<<"$PUBLISH_OUT")"
  done
  publish huge "$origin" "$w/pub-state"
  info "publish with nothing changed: $PUBLISH_SECONDS s"

  result publish "publish with $PUBLISH_CHANGED changed files vs find -printf (floor)" \
    "$(median <<<"$pub_times")" "$(median <<<"$find_times")" s
  result publish "its scan phase alone (publisher log) vs find -printf (floor)" \
    "$(median <<<"$scan_times")" "$(median <<<"$find_times")" s
  finish_bench "$w"
}

# ---------------------------------------------------------------------------
# 5. acks: broker fan-out and ACK throughput with hundreds of subscribers
# ---------------------------------------------------------------------------
bench_acks() {
  local n=$ACK_SUBS w=$D/acks origin i t0 t1 first last count pids rs_seconds span
  say "acks: one small update to $n subscriber processes (and $n parallel rsync pulls)"
  origin=$w/root/tiny
  "$GEN" tree "$origin" --small 20 --min 1024 --max 16384 --seed 51 | sed 's/^/    generated: /'
  for ((i = 1; i <= n; i++)); do seed_mirror "$origin" "$w/rs-$i"; done
  start_broker acks-broker "$w/root"
  publish tiny "$origin" "$w/pub-state"
  t0=$(now)
  for ((i = 1; i <= n; i++)); do start_subscriber "ack-mirror-$i" tiny "$w/mc-$i"; done
  wait_applied 1 "$n"
  info "$n subscribers bootstrapped serial 1 in $(sub "$(now)" "$t0") s"
  sleep 2 # event subscriptions settle (PUB/SUB drops what precedes them)
  "$GEN" update "$origin" --modify 1 --add 1 --seed 52 | sed 's/^/    update: /'

  t0=$(now)
  publish tiny "$origin" "$w/pub-state"
  expect_published 2
  wait_applied 2 "$n"
  count=$(ack_times 2 | wc -l)
  ((count == n)) || die "$count applied ACKs for serial 2 in the broker log, expected $n"
  first=$(log_epoch "$(ack_times 2 | head -n 1)")
  last=$(log_epoch "$(ack_times 2 | tail -n 1)")
  t1=$(sub "$last" "$t0")
  span=$(sub "$last" "$first")
  info "mirrorcast: publish $PUBLISH_SECONDS s; $count ACKs, first after $(sub "$first" "$t0") s," \
    "last after $t1 s"

  start_rsyncd "$origin"
  pids=()
  t0=$(now)
  for ((i = 1; i <= n; i++)); do
    "$RSYNC" -a --delete "$RSYNC_URL" "$w/rs-$i/" 2>>"$LOGS/rsync.log" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || die "an rsync pull failed (log: $LOGS/rsync.log)"; done
  rs_seconds=$(sub "$(now)" "$t0")
  info "rsync: $n parallel pulls done after $rs_seconds s"
  for ((i = 1; i <= n; i++)); do
    check_same_tree "$origin" "$w/mc-$i"
    check_same_tree "$origin" "$w/rs-$i"
  done

  result "acks N=$n" "time: publish start -> all ACKs recorded vs $n parallel rsync pulls" \
    "$t1" "$rs_seconds" s
  result "acks N=$n" "mirrors updated per second (N / that time)" \
    "$(awk -v n="$n" -v t="$t1" 'BEGIN { print n / t }')" \
    "$(awk -v n="$n" -v t="$rs_seconds" 'BEGIN { print n / t }')" per_s
  result "acks N=$n" "ACKs per second at the broker, first->last ACK ($span s)" \
    "$(awk -v n="$count" -v t="$span" 'BEGIN { print (t > 0 ? (n - 1) / t : 0) }')" - per_s
  finish_bench "$w"
}

# ---------------------------------------------------------------------------
# 6. scale: bench/scale.sh (its own table; a FAILED step there fails this run
# after the summary). Started like a daemon, so stop_all stops it (its trap
# stops its own processes and removes its trees, which live under $D).
# ---------------------------------------------------------------------------
SCALE_RC=0
bench_scale() {
  local rc=0
  BENCH_DIR=$D bash "$(dirname "${BASH_SOURCE[0]}")/scale.sh" "$BUILD_DIR" &
  PIDS+=("$!")
  NAMES+=(scale)
  wait "$!" || rc=$?
  unset 'PIDS[-1]' 'NAMES[-1]'
  SCALE_RC=$rc
  result scale "see the scale table above ($(basename "$BUILD_DIR")/bench-scale-results.txt)" \
    "$( ((rc == 0)) && echo ok || echo "FAILED steps (exit $rc)")" - -
}

# ---------------------------------------------------------------------------
# 7. relay: bench/relay.sh (its own table; a FAILED set-up there fails this
# run after the summary), started like scale.sh.
# ---------------------------------------------------------------------------
RELAY_RC=0
bench_relay() {
  local rc=0
  BENCH_DIR=$D bash "$(dirname "${BASH_SOURCE[0]}")/relay.sh" "$BUILD_DIR" &
  PIDS+=("$!")
  NAMES+=(relay)
  wait "$!" || rc=$?
  unset 'PIDS[-1]' 'NAMES[-1]'
  RELAY_RC=$rc
  result relay "see the relay table above ($(basename "$BUILD_DIR")/bench-relay-results.txt)" \
    "$( ((rc == 0)) && echo ok || echo "FAILED set-ups (exit $rc)")" - -
}

# ---------------------------------------------------------------------------
# Run and report
# ---------------------------------------------------------------------------
machine() {
  local disk
  disk=$(lsblk -dno NAME,ROTA,SIZE 2>/dev/null | awk '$3 != "0B" {
    printf "%s%s (%s, %s)", sep, $1, ($2 == 1 ? "rotational or virtual" : "non-rotational"), $3
    sep = ", " }')
  echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit:  $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), " \
    "$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM," \
    "kernel $(uname -r)"
  echo "disk:    ${disk:-unknown}; work dir on $(df -T "$D" | awk 'NR == 2 { print $2 " (" $1 ")" }')"
  echo "rsync:   $("$RSYNC" --version | head -n 1)"
  echo "scale:   $SCALE; benchmarks: ${SELECTED[*]}"
  echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min averages, when printed)"
}

START=$SECONDS
say "work directory $D (scale $SCALE)"
machine | sed 's/^/    /'
make_key
for name in "${SELECTED[@]}"; do
  t_bench=$SECONDS
  "bench_$name"
  info "($name took $((SECONDS - t_bench)) s)"
done

{
  echo "mirrorcast benchmarks (baseline: rsync, or the stat-only floor for 'publish';"
  echo "ratio = mirrorcast / baseline; below 1 favours mirrorcast)"
  machine
  echo "total:   $((SECONDS - START)) s"
  echo
  printf '%s\n' "benchmark|measure|mirrorcast|baseline|ratio" "${ROWS[@]}" |
    awk -F'|' '{ for (i = 1; i <= NF; i++) { cell[NR, i] = $i
                   if (length($i) > w[i]) w[i] = length($i) } }
      END { for (r = 1; r <= NR; r++) {
              line = ""
              for (i = 1; i <= 5; i++) line = line sprintf("%-" w[i] "s", cell[r, i]) (i < 5 ? "  " : "")
              print line
              if (r == 1) { line = ""; for (i = 1; i <= 5; i++) { s = sprintf("%" w[i] "s", "")
                gsub(/ /, "-", s); line = line s (i < 5 ? "  " : "") } print line } } }'
} >"$RESULTS_FILE"
echo
cat "$RESULTS_FILE"
echo
echo "(written to $RESULTS_FILE)"
((SCALE_RC == 0 && RELAY_RC == 0)) || exit 1
