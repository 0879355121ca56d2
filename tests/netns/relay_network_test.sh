#!/usr/bin/env bash
# Relays across real network links: every host in a network namespace this
# test makes (ip netns + veth into a bridge of its own), nothing else reached.
#
#   origin (10.77.0.1) --+-- relay-1 (10.77.0.11) -- m11 m12 m13
#                        +-- relay-2 (10.77.0.12) -- m21 m22 m23
#
# Checks, in order:
#   1. a publish reaches all six mirrors through their relays;
#   2. the origin's egress for an update (bytes sent on its link, from the
#      interface counters of its namespace) is about 2x the change (one copy
#      per relay), not 6x;
#   3. the origin's status shows all six mirrors via their relay;
#   4. relay-1 partitioned from the origin (its link down): an update
#      reaches its mirrors through the origin (failover); once the link is
#      back everything converges, the relay included;
#   5. kill -9 of relay-2 right after a publish: its mirrors fail over or
#      wait, and all converge once it is restarted;
#   6. a mirror that was down while three serials passed has them all when it
#      returns.
# Needs root and iproute2 (installed by deploy/install-deps.sh); exits 77
# (skipped) without them.
#   bash tests/netns/relay_network_test.sh BUILD_DIR
set -euo pipefail

BUILD_DIR=$(cd "${1:-build}" && pwd)
BIN=$BUILD_DIR/bin
if [[ $(id -u) != 0 ]] || ! command -v ip >/dev/null; then
  echo "SKIP: needs root and iproute2 (ip netns)"
  exit 77
fi
TAG=mc$(($$ % 100000)) # namespace and link names of this run (short: IFNAMSIZ)
if ! ip netns add "$TAG-probe" 2>/dev/null; then
  echo "SKIP: cannot create network namespaces here"
  exit 77
fi
ip netns del "$TAG-probe"

D=$(mktemp -d "${TMPDIR:-/tmp}/mirrorcast-netns.XXXXXX")
LOGS=$D/logs
mkdir -p "$LOGS"
HOSTS=(origin r1 r2 m11 m12 m13 m21 m22 m23)
declare -A ADDR=([origin]=10.77.0.1 [r1]=10.77.0.11 [r2]=10.77.0.12
  [m11]=10.77.0.21 [m12]=10.77.0.22 [m13]=10.77.0.23
  [m21]=10.77.0.31 [m22]=10.77.0.32 [m23]=10.77.0.33)
declare -A RELAY_OF=([m11]=r1 [m12]=r1 [m13]=r1 [m21]=r2 [m22]=r2 [m23]=r2)
MIRRORS=(m11 m12 m13 m21 m22 m23)
PORT=7000

say() { printf '==> %s\n' "$*"; }
die() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}
# shellcheck source=../../deploy/lib/daemons.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../deploy/lib/daemons.sh"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all 5 || true
  local h
  for h in hub "${HOSTS[@]}"; do ip netns del "$TAG-$h" 2>/dev/null || true; done
  if ((rc != 0)); then
    local f
    for f in "$LOGS"/*.log; do
      [[ -s $f ]] || continue
      echo "-- ${f##*/}"
      tail -n 25 "$f"
    done
  fi
  if [[ -z ${MIRRORCAST_KEEP_TEST_DIRS:-} ]]; then rm -rf "$D"; else echo "kept $D"; fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

in_ns() { # HOST COMMAND...
  local h=$1
  shift
  ip netns exec "$TAG-$h" "$@"
}

say "network: a bridge in its own namespace, one namespace per host"
ip netns add "$TAG-hub"
ip -n "$TAG-hub" link add br0 type bridge
ip -n "$TAG-hub" link set br0 up
for h in "${HOSTS[@]}"; do
  ip netns add "$TAG-$h"
  ip -n "$TAG-$h" link set lo up
  # eth0 in the host, hub-HOST on the bridge.
  ip link add "$TAG$h" type veth peer name "h$TAG$h"
  ip link set "$TAG$h" netns "$TAG-$h"
  ip link set "h$TAG$h" netns "$TAG-hub"
  ip -n "$TAG-$h" link set "$TAG$h" name eth0
  ip -n "$TAG-$h" addr add "${ADDR[$h]}/24" dev eth0
  ip -n "$TAG-$h" link set eth0 up
  ip -n "$TAG-hub" link set "h$TAG$h" master br0
  ip -n "$TAG-hub" link set "h$TAG$h" up
done

say "keys and allow-list"
"$BIN/mirrorcast" keygen --out "$D/origin" >"$LOGS/keygen.log" 2>&1
mkdir -p "$D/keys"
chmod 700 "$D/keys"
for name in broker r1 r2 publisher admin "${MIRRORS[@]}"; do
  "$BIN/mirrorcast" keygen --curve --out "$D/keys/$name" >>"$LOGS/keygen.log" 2>&1
done
{
  echo "publish release publisher.curve.pub"
  echo "admin ops admin.curve.pub"
  echo "relay r1 r1.curve.pub"
  echo "relay r2 r2.curve.pub"
  for m in "${MIRRORS[@]}"; do echo "mirror $m $m.curve.pub"; done
} >"$D/keys/allow.list"

TREE=$D/origin-root/demo
mkdir -p "$TREE/Packages" "$TREE/repodata"
for i in $(seq 1 40); do head -c 20000 /dev/urandom >"$TREE/Packages/p$i.rpm"; done
echo "serial one" >"$TREE/repodata/repomd.xml"

say "origin, two relays, six mirrors"
start_daemon origin ip netns exec "$TAG-origin" "$BIN/mirrorcast-broker" --listen "${ADDR[origin]}:$PORT" \
  --state "$D/origin-state" --tree-root "$D/origin-root" --trust "$D/origin.pub" \
  --curve-key "$D/keys/broker.curve.key" --allow "$D/keys/allow.list" --broker-id origin \
  --log-level debug
for r in r1 r2; do
  mkdir -p "$D/$r-root"
  start_daemon "$r" ip netns exec "$TAG-$r" "$BIN/mirrorcast-broker" --listen "${ADDR[$r]}:$PORT" \
    --state "$D/$r-state" --tree-root "$D/$r-root" --trust "$D/origin.pub" \
    --curve-key "$D/keys/$r.curve.key" --allow "$D/keys/allow.list" --broker-id "$r" \
    --upstream "${ADDR[origin]}:$PORT" --upstream-key "$D/keys/broker.curve.pub" \
    --upstream-poll 2 --failover-after 3 --log-level debug
done
start_mirror() { # ID
  local m=$1 r=${RELAY_OF[$1]}
  mkdir -p "$D/$m"
  start_daemon "$m" ip netns exec "$TAG-$m" "$BIN/mirrorcast-subscriber" \
    --broker "${ADDR[$r]}:$PORT" --broker "${ADDR[origin]}:$PORT" --failover-after 3 \
    --curve-key "$D/keys/$m.curve.key" --broker-key "$D/keys/$r.curve.pub" \
    --broker-key "$D/keys/broker.curve.pub" --trust "$D/origin.pub" --repo demo \
    --tree "$D/$m" --state "$D/$m-state" --id "$m" --poll-interval 2 --delete-delay 0 \
    --no-trace-files --log-level debug
}
for m in "${MIRRORS[@]}"; do start_mirror "$m"; done

SERIAL=0
publish() {
  in_ns origin timeout 120 "$BIN/mirrorcast-publish" --broker "${ADDR[origin]}:$PORT" \
    --key "$D/origin.key" --repo demo --tree "$TREE" --state "$D/pub-state" \
    --curve-key "$D/keys/publisher.curve.key" --broker-key "$D/keys/broker.curve.pub" \
    >>"$LOGS/publish.log" 2>&1 || die "publish failed"
  SERIAL=$((SERIAL + 1))
}
same_tree() { diff -r -x .mirrorcast-staging "$TREE" "$1" >/dev/null 2>&1; }
wait_converged() { # TIMEOUT_SECONDS WHAT
  local deadline=$((SECONDS + $1)) m left
  while :; do
    left=""
    for m in "${MIRRORS[@]}" r1 r2; do
      local t=$D/$m
      [[ $m == r? ]] && t=$D/$m-root/demo
      same_tree "$t" || left+=" $m"
    done
    [[ -z $left ]] && return 0
    ((SECONDS < deadline)) || die "$2: not converged within $1 s:$left"
    sleep 0.2
  done
}
status_json() {
  in_ns origin timeout 10 "$BIN/mirrorcast" status --broker "${ADDR[origin]}:$PORT" --json \
    --curve-key "$D/keys/admin.curve.key" --broker-key "$D/keys/broker.curve.pub"
}
tx_bytes() { in_ns origin cat /sys/class/net/eth0/statistics/tx_bytes; }

say "1. serial 1 reaches all six mirrors through their relays"
publish
wait_converged 90 "serial 1"

say "2. the origin's egress for an update is about one copy per relay"
sleep 3 # ACKs, polls and heartbeats of the first serial settle
for i in $(seq 1 20); do head -c 100000 /dev/urandom >"$TREE/Packages/new$i.rpm"; done
echo "serial two" >"$TREE/repodata/repomd.xml"
CHANGE=$((20 * 100000))
before=$(tx_bytes)
publish
wait_converged 90 "serial 2"
after=$(tx_bytes)
EGRESS=$((after - before))
ratio=$(awk -v e="$EGRESS" -v c="$CHANGE" 'BEGIN { printf "%.2f", e / c }')
echo "    change $CHANGE bytes, origin egress $EGRESS bytes: ${ratio}x (2 relays, 6 mirrors)"
# One copy per relay plus protocol overhead; direct fan-out would be 6x.
awk -v r="$ratio" 'BEGIN { exit !(r >= 1.9 && r < 3.0) }' ||
  die "origin egress is ${ratio}x the change; expected about 2x (one copy per relay)"
echo "$ratio" >"$D/egress-ratio"

say "3. the origin's status shows all six mirrors behind their relays"
deadline=$((SECONDS + 30))
while :; do
  shown=$(status_json | python3 -c '
import json, sys
rows = {m["mirror_id"]: (m.get("via", ""), m["serial"]) for m in json.load(sys.stdin)["mirrors"]}
print(" ".join(f"{k}={v[0]}@{v[1]}" for k, v in sorted(rows.items())))' 2>/dev/null || true)
  want="m11=r1@2 m12=r1@2 m13=r1@2 m21=r2@2 m22=r2@2 m23=r2@2 r1=@2 r2=@2"
  [[ $shown == "$want" ]] && break
  ((SECONDS < deadline)) || die "status shows '$shown', expected '$want'"
  sleep 0.5
done
echo "    $shown"

say "4. relay-1 partitioned from the origin: its mirrors fail over; all converge when it is back"
ip -n "$TAG-hub" link set "h${TAG}r1" down
echo "serial three" >"$TREE/repodata/repomd.xml"
head -c 50000 /dev/urandom >"$TREE/Packages/p1.rpm"
publish
deadline=$((SECONDS + 60))
for m in m11 m12 m13; do
  until same_tree "$D/$m"; do
    ((SECONDS < deadline)) || die "$m did not get serial 3 while relay-1 was cut off"
    sleep 0.2
  done
done
same_tree "$D/r1-root/demo" && die "relay-1 has serial 3 although it was cut off"
ip -n "$TAG-hub" link set "h${TAG}r1" up
wait_converged 90 "after the partition"
grep -q "switched from broker" "$LOGS/m11.log" || die "m11 did not log its failover"

say "5. kill -9 of relay-2 right after a publish; all converge once it is back"
head -c 3000000 /dev/urandom >"$TREE/Packages/big.rpm"
echo "serial four" >"$TREE/repodata/repomd.xml"
publish
kill_daemon r2
sleep 1
start_daemon r2 ip netns exec "$TAG-r2" "$BIN/mirrorcast-broker" --listen "${ADDR[r2]}:$PORT" \
  --state "$D/r2-state" --tree-root "$D/r2-root" --trust "$D/origin.pub" \
  --curve-key "$D/keys/r2.curve.key" --allow "$D/keys/allow.list" --broker-id r2 \
  --upstream "${ADDR[origin]}:$PORT" --upstream-key "$D/keys/broker.curve.pub" \
  --upstream-poll 2 --failover-after 3 --log-level debug
wait_converged 120 "after relay-2's restart"

say "6. a mirror that was down while three serials passed has them when it returns"
kill_daemon m23
for s in five six seven; do
  echo "serial $s" >"$TREE/repodata/repomd.xml"
  publish
done
start_mirror m23
wait_converged 60 "after m23 returned"
for m in "${MIRRORS[@]}"; do
  if grep -q "rejected" "$LOGS/$m.log"; then die "$m rejected something: $(grep -m1 rejected "$LOGS/$m.log")"; fi
done

stop_all 10
[[ -z $STOP_FAILURES ]] || die "not a clean shutdown:$STOP_FAILURES"
echo "PASS: origin egress ${ratio}x the change for 2 relays and 6 mirrors; partition, relay kill -9" \
  "and a returning mirror all converged"
