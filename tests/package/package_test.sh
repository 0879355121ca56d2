#!/usr/bin/env bash
# The Debian package, as an operator gets it: built with CPack from this build
# directory, checked for its metadata and files, installed into a clean root
# with `dpkg --root` (its maintainer scripts run chrootless against that root,
# so the running system is not touched), its programs started from there,
# purged again, and checked by lintian (no errors allowed; warnings are
# printed).
#
#   bash tests/package/package_test.sh BUILD_DIR
set -euo pipefail

BUILD_DIR=$(cd "${1:?usage: package_test.sh BUILD_DIR}" && pwd)
work=$(mktemp -d /tmp/mirrorcast-package.XXXXXX)
trap 'rm -rf "$work"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# 1. Build it (into the test's own directory, so `make package` can run beside).
if ! (cd "$BUILD_DIR" && timeout 240 cpack -G DEB -B "$work/out") >"$work/cpack.log" 2>&1; then
  cat "$work/cpack.log" >&2
  fail "cpack -G DEB failed"
fi
debs=("$work"/out/mirrorcast_*.deb)
[[ ${#debs[@]} -eq 1 && -f ${debs[0]} ]] || fail "expected one mirrorcast_*.deb in $work/out: ${debs[*]}"
deb=${debs[0]}
echo "built $(basename "$deb") ($(stat -c %s "$deb") bytes)"

# 2. Metadata.
[[ $(dpkg-deb -f "$deb" Package) == mirrorcast ]] || fail "package name"
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
for lib in libzmq5 libprotobuf32 librsync2 libsqlite3-0 libssl3 libboost-log1.74.0 \
  libboost-program-options1.74.0 libstdc++6 libc6; do
  [[ $depends == *"$lib"* ]] || fail "Depends lacks $lib (dpkg-shlibdeps not run?)"
done
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
for f in /etc/mirrorcast/broker.conf.example /etc/mirrorcast/subscriber.conf.example; do
  grep -qx "$f" <<<"$conffiles" || fail "$f is not a conffile"
done

# 3. Files.
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$work/files"
for f in /usr/bin/mirrorcast /usr/bin/mirrorcast-broker /usr/bin/mirrorcast-subscriber \
  /usr/bin/mirrorcast-publish /lib/systemd/system/mirrorcast-broker.service \
  /lib/systemd/system/mirrorcast-subscriber@.service /usr/lib/sysusers.d/mirrorcast.conf \
  /usr/lib/tmpfiles.d/mirrorcast.conf /etc/mirrorcast/broker.conf.example \
  /etc/mirrorcast/subscriber.conf.example /usr/share/doc/mirrorcast/copyright \
  /usr/share/doc/mirrorcast/changelog.gz /usr/share/doc/mirrorcast/operations.md \
  /usr/share/man/man1/mirrorcast.1.gz /usr/share/man/man1/mirrorcast-broker.1.gz \
  /usr/share/man/man1/mirrorcast-subscriber.1.gz /usr/share/man/man1/mirrorcast-publish.1.gz; do
  grep -qx "$f" "$work/files" || fail "$f is not in the package"
done
if grep -E '^/usr/(local|include)|/bench|test' "$work/files"; then
  fail "the package carries files that are not for operators (above)"
fi
# The units start the packaged programs.
dpkg-deb -x "$deb" "$work/x"
grep -q '^ExecStart=/usr/bin/mirrorcast-broker ' "$work/x/lib/systemd/system/mirrorcast-broker.service" ||
  fail "the broker unit does not start /usr/bin/mirrorcast-broker"
grep -q '^ExecStart=/usr/bin/mirrorcast-subscriber ' \
  "$work/x/lib/systemd/system/mirrorcast-subscriber@.service" ||
  fail "the subscriber unit does not start /usr/bin/mirrorcast-subscriber"

# 4. Install into a clean root; the maintainer scripts run against it.
root=$work/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
host_passwd=$(sha256sum /etc/passwd)
dpkg_root() {
  timeout 120 dpkg --root="$root" --log=/dev/null --force-script-chrootless --force-depends \
    --force-not-root "$@"
}
dpkg_root -i "$deb" >"$work/install.log" 2>&1 || {
  cat "$work/install.log" >&2
  fail "dpkg --root -i failed"
}
[[ $(dpkg --root="$root" -s mirrorcast | sed -n 's/^Status: //p') == "install ok installed" ]] ||
  fail "the package is not recorded as installed in the clean root"
grep -q '^mirrorcast:' "$root/etc/passwd" || fail "postinst did not make the mirrorcast user"
uid=$(awk -F: '$1 == "mirrorcast" {print $3}' "$root/etc/passwd")
[[ $(stat -c '%u %a' "$root/var/lib/mirrorcast") == "$uid 750" ]] ||
  fail "/var/lib/mirrorcast is $(stat -c '%u %a' "$root/var/lib/mirrorcast"), not $uid (mirrorcast) 750"
[[ $(sha256sum /etc/passwd) == "$host_passwd" ]] || fail "the install changed the host's /etc/passwd"
for p in mirrorcast mirrorcast-broker mirrorcast-subscriber mirrorcast-publish; do
  "$root/usr/bin/$p" --help >"$work/help" 2>&1 || fail "$p --help from the package failed: $(head -3 "$work/help")"
done
"$root/usr/bin/mirrorcast" keygen --out "$work/k" >/dev/null || fail "the packaged mirrorcast keygen failed"
echo "installed into a clean root: $(wc -l <"$work/files") paths; user, state directory and programs work"

# 5. Purge: the programs go, and so does the state directory.
dpkg_root --purge mirrorcast >"$work/purge.log" 2>&1 || {
  cat "$work/purge.log" >&2
  fail "dpkg --root --purge failed"
}
[[ ! -e $root/usr/bin/mirrorcast-broker ]] || fail "purge left /usr/bin/mirrorcast-broker"
[[ ! -e $root/var/lib/mirrorcast ]] || fail "purge left /var/lib/mirrorcast"
[[ ! -e $root/etc/mirrorcast/broker.conf.example ]] || fail "purge left the conffiles"
echo "purged cleanly"

# 6. lintian: no errors.
if ! command -v lintian >/dev/null; then
  fail "lintian is not installed (bash deploy/install-deps.sh installs it)"
fi
set +e
timeout 240 lintian --fail-on error --tag-display-limit 0 "$deb" >"$work/lintian.log" 2>&1
rc=$?
set -e
cat "$work/lintian.log"
echo "lintian: $(grep -c '^E:' "$work/lintian.log" || true) errors, $(grep -c '^W:' "$work/lintian.log" || true) warnings (exit $rc)"
[[ $rc -eq 0 ]] || fail "lintian reported errors"
echo "PASS"
