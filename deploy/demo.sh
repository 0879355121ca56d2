#!/usr/bin/env bash
# mirrorcast end-to-end demo, run by `make demo` as: bash deploy/demo.sh BUILD_DIR
#
# On loopback only (127.0.0.1), in a temporary directory removed on exit:
#   1. an origin signing key, CURVE transport keys for the broker, the
#      publisher, the admin tool and each mirror, an allow-list naming them in
#      their roles, a sample yum-style repo (300 small packages, repodata/,
#      one 50 MiB image), an origin broker, a relay broker (a tier-1 mirror
#      that serves its region: mirrorcast-broker --upstream) and three
#      mirrors: mirror-1 follows the origin, mirror-2 and mirror-3 follow the
#      relay (with the origin as their fallback); every socket uses CURVE and
#      a key not on the list is refused;
#   2. publish serial 1 and wait until every mirror has applied it;
#   3. a second change: ~20 new files, a few KiB changed inside the big image,
#      one delete, one rename, regenerated repodata; publish, wait again;
#   4. print the origin's mirror table (the relay's mirrors show "via" it:
#      their ACKs travel up through the relay), check every mirror tree and
#      the relay's is identical to the origin and that the second update
#      cost < 1 MiB per mirror.
#   5. kill -9 the relay: its mirrors fail over to the origin and a third
#      change still reaches every mirror.
# Exits 0 only if every check passed. Every process it starts is stopped on
# any exit path. Set MIRRORCAST_DEMO_KEEP=1 to keep the directory for a look.
set -euo pipefail

BUILD_DIR=${1:-build}
REPO=demo
MIRRORS=(mirror-1 mirror-2 mirror-3)
RELAY=relay-eu
BEHIND_RELAY=(mirror-2 mirror-3) # the others follow the origin
APPLY_TIMEOUT=120                  # seconds for all mirrors to reach a serial
WIRE_LIMIT=$((1024 * 1024))        # bytes a mirror may fetch for the second change

say() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

if [[ ! -d $BUILD_DIR/bin ]]; then
  die "no $BUILD_DIR/bin: build first (make build, or make demo)"
fi
BIN=$(cd "$BUILD_DIR/bin" && pwd)
for prog in mirrorcast mirrorcast-broker mirrorcast-publish mirrorcast-subscriber; do
  [[ -x $BIN/$prog ]] || die "$BIN/$prog is missing: build first"
done

D=$(mktemp -d "${TMPDIR:-/tmp}/mirrorcast-demo.XXXXXX")
LOGS=$D/logs
mkdir -p "$LOGS"

# ---------------------------------------------------------------------------
# Process bookkeeping: every daemon we start is stopped on every exit path.
# ---------------------------------------------------------------------------
# shellcheck source=lib/daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/daemons.sh"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all || true
  if ((rc != 0)); then
    echo
    echo "---- last lines of each log ($LOGS) ----"
    local f
    for f in "$LOGS"/*.log; do
      [[ -s $f ]] || continue
      echo "-- ${f##*/}"
      tail -n 15 "$f" | sed 's/^/   /'
    done
  fi
  if [[ -n ${MIRRORCAST_DEMO_KEEP:-} ]]; then
    echo "(kept $D)"
  else
    rm -rf "$D"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
human() {
  awk -v n="$1" 'BEGIN {
    split("B KiB MiB GiB", u, " "); i = 1
    while (n >= 1024 && i < 4) { n /= 1024; i++ }
    fmt = (i == 1) ? "%d %s" : "%.1f %s"
    printf fmt, n, u[i] }'
}

# ---------------------------------------------------------------------------
# Status: `mirrorcast status --json`, flattened to lines that bash can read:
#   repo NAME SERIAL
#   mirror ID REPO SERIAL STATE TARGET_SERIAL BYTES_FETCHED BYTES_REUSED SECONDS BYTES_SIGNATURE
# with python3, else jq, else a grep/sed fallback (flat objects only).
# ---------------------------------------------------------------------------
flatten_status() {
  if [[ ${MIRRORCAST_DEMO_JSON:-} != grep ]] && command -v python3 >/dev/null 2>&1; then
    python3 -c '
import json, sys
d = json.load(sys.stdin)
def st(v):
    s = str(v).lower()
    return s[4:] if s.startswith("ack_") else s
for r in d.get("repos") or []:
    print("repo", r.get("repo", "?"), r.get("serial", 0))
for m in d.get("mirrors") or []:
    print("mirror", m.get("mirror_id", "?"), m.get("repo", "?"), m.get("serial", 0),
          st(m.get("state", "?")), m.get("target_serial", 0), m.get("bytes_fetched", 0),
          m.get("bytes_reused", 0), m.get("seconds", 0), m.get("bytes_signature", 0))
'
  elif [[ ${MIRRORCAST_DEMO_JSON:-} != grep ]] && command -v jq >/dev/null 2>&1; then
    jq -r '
      def st: tostring | ascii_downcase | ltrimstr("ack_");
      ((.repos // [])[] | "repo \(.repo) \(.serial // 0)"),
      ((.mirrors // [])[] | "mirror \(.mirror_id) \(.repo) \(.serial // 0) \(.state | st)"
        + " \(.target_serial // 0) \(.bytes_fetched // 0) \(.bytes_reused // 0) \(.seconds // 0)"
        + " \(.bytes_signature // 0)")
    '
  else
    local obj state
    tr -d '\n\r' | grep -o '{[^{}]*}' | while IFS= read -r obj; do
      if [[ $obj == *'"mirror_id"'* ]]; then
        state=$(json_field "$obj" state | tr '[:upper:]' '[:lower:]')
        state=${state#ack_}
        echo "mirror $(json_field "$obj" mirror_id) $(json_field "$obj" repo)" \
          "$(json_field "$obj" serial) ${state:-?} $(json_field "$obj" target_serial)" \
          "$(json_field "$obj" bytes_fetched) $(json_field "$obj" bytes_reused)" \
          "$(json_field "$obj" seconds) $(json_field "$obj" bytes_signature)"
      elif [[ $obj == *'"repo"'* ]]; then
        echo "repo $(json_field "$obj" repo) $(json_field "$obj" serial)"
      fi
    done
  fi
}

# The value of "KEY" in one flat JSON object (quotes stripped), for the fallback.
json_field() { # OBJECT KEY
  printf '%s' "$1" |
    sed -n -E 's/.*"'"$2"'"[[:space:]]*:[[:space:]]*"?([^",}]*)"?.*/\1/p' | tr -d ' '
}

status_lines() {
  local json
  json=$(timeout 10 "$BIN/mirrorcast" status --broker "$BROKER" --json $(curve_flags admin) \
    2>>"$LOGS/status.log") ||
    return 1
  flatten_status <<<"$json"
}

repo_serial() { # prints the broker's serial of $REPO
  local lines
  lines=$(status_lines) || die "mirrorcast status failed (log: $LOGS/status.log)"
  awk -v r="$REPO" '$1 == "repo" && $2 == r { print $3; exit }' <<<"$lines"
}

# Waits until every mirror reports `applied` at serial $1.
wait_for_serial() {
  local want=$1 start=$2 deadline=$((SECONDS + APPLY_TIMEOUT)) next_report=$((SECONDS + 5))
  local lines id line serial state done summary
  while :; do
    check_alive
    if lines=$(status_lines); then
      done=0
      summary=""
      for id in "${MIRRORS[@]}"; do
        line=$(awk -v id="$id" -v r="$REPO" '$1 == "mirror" && $2 == id && $3 == r' <<<"$lines")
        serial=$(awk '{ print $4 }' <<<"$line")
        state=$(awk '{ print $5 }' <<<"$line")
        if [[ $serial == "$want" && $state == applied ]]; then done=$((done + 1)); fi
        summary+="$id: ${serial:-none}/${state:-no ack yet}  "
      done
      if ((done == ${#MIRRORS[@]})); then
        info "all ${#MIRRORS[@]} mirrors applied serial $want, $(elapsed "$start") s after publish"
        return 0
      fi
    else
      summary="(status not available yet)"
    fi
    if ((SECONDS >= deadline)); then
      die "mirrors did not reach serial $want within ${APPLY_TIMEOUT}s: $summary"
    fi
    if ((SECONDS >= next_report)); then
      info "waiting: $summary"
      next_report=$((SECONDS + 5))
    fi
    sleep 0.25
  done
}

publish() {
  local out
  if ! out=$(timeout 120 "$BIN/mirrorcast-publish" --broker "$BROKER" --key "$D/origin.key" \
    --repo "$REPO" --tree "$D/origin-root/$REPO" --state "$D/pub-state" \
    $(curve_flags publisher) 2>>"$LOGS/publish.log"); then
    die "mirrorcast-publish failed (log: $LOGS/publish.log)"
  fi
  printf '%s\n' "$out" >>"$LOGS/publish.log"
  printf '%s\n' "$out" | sed 's/^/    /'
}

# The transport flags of a client holding keys/NAME.curve.key.
curve_flags() { # NAME
  printf -- '--curve-key %s --broker-key %s' "$D/keys/$1.curve.key" "$D/keys/broker.curve.pub"
}

# ---------------------------------------------------------------------------
# The sample repository
# ---------------------------------------------------------------------------
random_file() { # PATH MIN_BYTES MAX_BYTES
  local size=$(($2 + (RANDOM * 32768 + RANDOM) % ($3 - $2 + 1)))
  head -c "$size" /dev/urandom >"$1"
}

# repodata/ the way createrepo lays it out: content-addressed *.xml.gz files
# and a repomd.xml index naming them. Regenerated from the package list.
make_repodata() {
  local root=$1 kind gz sum
  rm -rf "$root/repodata"
  mkdir -p "$root/repodata"
  {
    echo '<?xml version="1.0" encoding="UTF-8"?>'
    echo '<repomd xmlns="http://linux.duke.edu/metadata/repo">'
    echo "  <revision>$(date +%s%N)</revision>"
  } >"$root/repodata/repomd.xml.new"
  for kind in primary filelists; do
    (cd "$root" && find Packages -type f -name '*.rpm' | LC_ALL=C sort |
      awk -v k="$kind" 'BEGIN { print "<metadata type=\"" k "\">" }
        { print "  <package href=\"" $0 "\"/>" } END { print "</metadata>" }') |
      gzip -n >"$root/repodata/$kind.xml.gz"
    sum=$(sha256sum "$root/repodata/$kind.xml.gz" | cut -d' ' -f1)
    gz=$sum-$kind.xml.gz
    mv "$root/repodata/$kind.xml.gz" "$root/repodata/$gz"
    cat >>"$root/repodata/repomd.xml.new" <<EOF
  <data type="$kind">
    <checksum type="sha256">$sum</checksum>
    <location href="repodata/$gz"/>
  </data>
EOF
  done
  echo '</repomd>' >>"$root/repodata/repomd.xml.new"
  mv "$root/repodata/repomd.xml.new" "$root/repodata/repomd.xml"
}

make_sample_repo() {
  local root=$1 dir i
  for dir in a b c d; do
    mkdir -p "$root/Packages/$dir"
    for ((i = 1; i <= 75; i++)); do
      random_file "$root/Packages/$dir/$dir-pkg$(printf %03d "$i")-1.0-1.x86_64.rpm" 1024 20480
    done
  done
  mkdir -p "$root/isos"
  head -c 50M /dev/urandom >"$root/isos/big.iso"
  ln -s big.iso "$root/isos/latest.iso"
  make_repodata "$root"
}

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
FAILED=0
check_fail() {
  printf 'FAIL: %s\n' "$*"
  FAILED=1
}

# Type and permission bits of everything below a tree (diff -r ignores them).
# The mirror's own trace files (project/trace/ID, lastsync) are not the origin's.
tree_modes() {
  (cd "$1" && find . -mindepth 1 \( -path ./.mirrorcast-staging -prune \) -o \
    \( -path ./project -prune \) -o \( -path ./lastsync -prune \) -o \
    -printf '%P %y %m\n' | LC_ALL=C sort)
}

verify_trees() {
  local id origin=$D/origin-root/$REPO
  for id in "${MIRRORS[@]}"; do
    if ! diff -r --no-dereference -x .mirrorcast-staging -x project -x lastsync "$origin" "$D/$id" \
      >"$LOGS/diff-$id.txt" 2>&1; then
      check_fail "$id differs from the origin tree:"
      head -n 20 "$LOGS/diff-$id.txt" | sed 's/^/    /'
    elif ! diff <(tree_modes "$origin") <(tree_modes "$D/$id") >"$LOGS/modes-$id.txt"; then
      check_fail "$id has the same contents but different file types or modes:"
      head -n 20 "$LOGS/modes-$id.txt" | sed 's/^/    /'
    else
      info "$id: identical to the origin ($(find "$D/$id" -type f | grep -vc -e '/.mirrorcast-staging/' -e '/project/trace/' -e '/lastsync$') files, and its trace files project/trace/$id and lastsync)"
    fi
  done
}

verify_wire_cost() { # SERIAL
  local lines id line serial fetched reused signature wire
  lines=$(status_lines) || die "mirrorcast status failed (log: $LOGS/status.log)"
  for id in "${MIRRORS[@]}"; do
    line=$(awk -v id="$id" -v r="$REPO" '$1 == "mirror" && $2 == id && $3 == r' <<<"$lines")
    serial=$(awk '{ print $4 }' <<<"$line")
    fetched=$(awk '{ print $7 }' <<<"$line")
    reused=$(awk '{ print $8 }' <<<"$line")
    signature=$(awk '{ print $10 }' <<<"$line")
    [[ $signature =~ ^[0-9]+$ ]] || signature=0
    if [[ $serial != "$1" || ! $fetched =~ ^[0-9]+$ ]]; then
      check_fail "$id: no ACK for serial $1 with bytes_fetched in the status (got: '$line')"
      continue
    fi
    # On the wire: what the mirror received plus the delta signatures it sent.
    wire=$((fetched + signature))
    if ((wire >= WIRE_LIMIT)); then
      check_fail "$id moved $(human "$wire") for serial $1; the limit is $(human "$WIRE_LIMIT")"
    else
      info "$id: $(human "$wire") on the wire ($(human "$fetched") fetched +" \
        "$(human "$signature") of delta signature sent), reused $(human "${reused:-0}") it already had"
    fi
  done
}

# ---------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------
say "working in $D"

say "generating the origin signing key"
"$BIN/mirrorcast" keygen --out "$D/origin" >>"$LOGS/keygen.log" 2>&1 ||
  die "mirrorcast keygen failed (log: $LOGS/keygen.log)"
sed 's/^[[:space:]]*/    /' "$LOGS/keygen.log"

say "generating CURVE transport keys and the broker's allow-list"
mkdir -p "$D/keys"
chmod 700 "$D/keys"
for name in broker "$RELAY" publisher admin "${MIRRORS[@]}" intruder; do
  "$BIN/mirrorcast" keygen --curve --out "$D/keys/$name" >>"$LOGS/keygen.log" 2>&1 ||
    die "mirrorcast keygen --curve failed (log: $LOGS/keygen.log)"
done
{
  echo "# ROLE NAME PUBLIC-KEY-FILE-OR-Z85 (roles: publish, mirror, relay, admin)"
  echo "publish release-host publisher.curve.pub"
  echo "admin ops admin.curve.pub"
  echo "relay $RELAY $RELAY.curve.pub"
  for id in "${MIRRORS[@]}"; do echo "mirror $id $id.curve.pub"; done
} >"$D/keys/allow.list"
sed 's/^/    /' "$D/keys/allow.list"

say "creating the sample repository (300 packages, repodata/, a 50 MiB image)"
make_sample_repo "$D/origin-root/$REPO"
info "$(find "$D/origin-root/$REPO" -type f | wc -l) files, $(du -sh "$D/origin-root/$REPO" | cut -f1)"

say "starting broker on 127.0.0.1"
start_daemon broker "$BIN/mirrorcast-broker" --listen 127.0.0.1:0 --port-file "$D/broker.port" \
  --state "$D/broker-state" --tree-root "$D/origin-root" --trust "$D/origin.pub" \
  --curve-key "$D/keys/broker.curve.key" --allow "$D/keys/allow.list"
deadline=$((SECONDS + 20))
while [[ ! -s $D/broker.port ]]; do
  check_alive
  ((SECONDS < deadline)) || die "broker wrote no --port-file within 20 s"
  sleep 0.05
done
sleep 0.05 # let a non-atomic writer finish the line
BROKER=$(tr -d '[:space:]' <"$D/broker.port")
[[ $BROKER =~ ^127\.0\.0\.1:[0-9]+$ ]] || die "unexpected port file content: '$BROKER'"
info "control socket at $BROKER"

say "starting the relay $RELAY (mirrorcast-broker --upstream $BROKER)"
mkdir -p "$D/relay-root"
# The relay's own allow-list (here the same file) names its region's mirrors;
# the origin's names the relay with role relay: it may follow, never publish.
start_daemon "$RELAY" "$BIN/mirrorcast-broker" --listen 127.0.0.1:0 --port-file "$D/relay.port" \
  --state "$D/relay-state" --tree-root "$D/relay-root" --trust "$D/origin.pub" \
  --curve-key "$D/keys/$RELAY.curve.key" --allow "$D/keys/allow.list" --broker-id "$RELAY" \
  --upstream "$BROKER" --upstream-key "$D/keys/broker.curve.pub" --failover-after 3
deadline=$((SECONDS + 20))
while [[ ! -s $D/relay.port ]]; do
  check_alive
  ((SECONDS < deadline)) || die "the relay wrote no --port-file within 20 s"
  sleep 0.05
done
sleep 0.05
RELAY_ADDR=$(tr -d '[:space:]' <"$D/relay.port")
info "relay control socket at $RELAY_ADDR, following $BROKER"

behind_relay() { [[ " ${BEHIND_RELAY[*]} " == *" $1 "* ]]; }

say "starting ${#MIRRORS[@]} mirrors (${BEHIND_RELAY[*]} behind $RELAY, the origin as fallback)"
for id in "${MIRRORS[@]}"; do
  mkdir -p "$D/$id"
  if behind_relay "$id"; then
    # A dead relay is noticed at the next poll (or, with heartbeats, once
    # stale): polled every 5 s here, 30 by default.
    brokers=(--broker "$RELAY_ADDR" --broker "$BROKER" --failover-after 3 --poll-interval 5
      --curve-key "$D/keys/$id.curve.key" --broker-key "$D/keys/$RELAY.curve.pub"
      --broker-key "$D/keys/broker.curve.pub")
  else
    read -r -a brokers <<<"--broker $BROKER $(curve_flags "$id")"
  fi
  start_daemon "$id" "$BIN/mirrorcast-subscriber" "${brokers[@]}" --trust "$D/origin.pub" \
    --repo "$REPO" --tree "$D/$id" --state "$D/$id-state" --id "$id" --trace-name "$id" \
    --delete-delay 0 # the demo compares trees at once; the default keeps deleted files 48 h
done
sleep 0.5
check_alive

say "publishing serial 1 (the whole repository)"
t0=$(now)
publish
serial1=$(repo_serial)
[[ $serial1 =~ ^[0-9]+$ ]] || die "the broker reports no serial for $REPO after publishing"
say "waiting for the mirrors to apply serial $serial1"
wait_for_serial "$serial1" "$t0"

say "second change: 20 new packages, 8 KiB changed inside big.iso, 1 delete, 1 rename, new repodata"
origin=$D/origin-root/$REPO
mkdir -p "$origin/Packages/e"
for ((i = 1; i <= 10; i++)); do
  random_file "$origin/Packages/e/e-pkg$(printf %03d "$i")-1.0-1.x86_64.rpm" 1024 20480
  random_file "$origin/Packages/a/a-pkg$(printf %03d "$i")-1.1-1.x86_64.rpm" 1024 20480
done
# 8 KiB at 25 MiB into the 50 MiB file: a delta, not a re-download.
dd if=/dev/urandom of="$origin/isos/big.iso" bs=4096 count=2 seek=6400 conv=notrunc status=none
rm "$origin/Packages/b/b-pkg007-1.0-1.x86_64.rpm"
mv "$origin/Packages/c/c-pkg042-1.0-1.x86_64.rpm" "$origin/Packages/c/c-pkg042-1.0-2.x86_64.rpm"
make_repodata "$origin"

say "publishing the second change"
t0=$(now)
publish
serial2=$(repo_serial)
[[ $serial2 =~ ^[0-9]+$ ]] || die "the broker reports no serial for $REPO after publishing"
((serial2 > serial1)) || die "serial did not advance ($serial1 -> $serial2)"
say "waiting for the mirrors to apply serial $serial2"
wait_for_serial "$serial2" "$t0"

say "mirror table (mirrorcast status --broker $BROKER)"
timeout 10 "$BIN/mirrorcast" status --broker "$BROKER" $(curve_flags admin) \
  2>>"$LOGS/status.log" | sed 's/^/    /' || check_fail "mirrorcast status (table) failed"

say "a key not on the allow-list is refused (mirrorcast status with the intruder's key)"
if intruder=$(timeout 20 "$BIN/mirrorcast" status --broker "$BROKER" --timeout 2 \
  $(curve_flags intruder) 2>&1); then
  check_fail "the broker answered a key that is not on its allow-list: $intruder"
elif [[ $intruder != *"refused this client's key"* ]]; then
  check_fail "the intruder was not told its key was refused: $intruder"
else
  info "refused: ${intruder:0:110}..."
fi

say "checking every mirror tree, and the relay's, is identical to the origin"
verify_trees
if diff -r --no-dereference -x .mirrorcast-staging "$D/origin-root/$REPO" "$D/relay-root/$REPO" \
  >"$LOGS/diff-$RELAY.txt" 2>&1; then
  info "$RELAY: identical to the origin (it applied each serial before its mirrors got it)"
else
  check_fail "$RELAY's tree differs from the origin's (see $LOGS/diff-$RELAY.txt)"
fi
for id in "${BEHIND_RELAY[@]}"; do
  via=$(timeout 10 "$BIN/mirrorcast" status --broker "$BROKER" --json $(curve_flags admin) \
    2>>"$LOGS/status.log" | python3 -c '
import json, sys
for m in json.load(sys.stdin).get("mirrors") or []:
    if m.get("mirror_id") == sys.argv[1]: print(m.get("via", ""))' "$id" 2>/dev/null || true)
  if [[ $via == "$RELAY" ]]; then
    info "$id: reported to the origin via $RELAY"
  else
    check_fail "$id: the origin does not show it via $RELAY (via='$via')"
  fi
done

say "checking the second change cost less than $(human "$WIRE_LIMIT") on the wire per mirror"
verify_wire_cost "$serial2"

say "kill -9 of the relay: its mirrors fail over to the origin for a third change"
kill_daemon "$RELAY"
random_file "$origin/Packages/e/e-pkg011-1.0-1.x86_64.rpm" 1024 20480
make_repodata "$origin"
t0=$(now)
publish
serial3=$(repo_serial)
say "waiting for every mirror to apply serial $serial3 (those behind the dead relay from the origin)"
wait_for_serial "$serial3" "$t0"
for id in "${BEHIND_RELAY[@]}"; do
  if grep -q "switched from broker" "$LOGS/$id.log"; then
    info "$id: $(grep -o 'switched from broker.*' "$LOGS/$id.log" | head -n 1 | cut -c1-100)"
  else
    check_fail "$id did not log its failover"
  fi
done
serial2=$serial3

say "stopping everything (SIGTERM)"
stop_all
if [[ -n $STOP_FAILURES ]]; then
  check_fail "not a clean shutdown:$STOP_FAILURES"
fi

echo
if ((FAILED)); then
  echo "DEMO FAILED (see FAIL lines above)"
  exit 1
fi
echo "PASS: ${#MIRRORS[@]} mirrors (${#BEHIND_RELAY[@]} behind relay $RELAY) identical to the" \
  "origin at serial $serial2; the second change cost < $(human "$WIRE_LIMIT") per mirror;" \
  "a killed relay's mirrors failed over"
