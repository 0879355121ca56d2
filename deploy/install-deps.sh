#!/usr/bin/env bash
# Installs the Debian 12 packages mirrorcast needs to build, test and run its demo.
# Idempotent and non-interactive: does nothing when everything is already there.
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libzmq3-dev cppzmq-dev
  libprotobuf-dev protobuf-compiler
  librsync-dev libssl-dev libsqlite3-dev
  libboost-log-dev libboost-program-options-dev
  libgtest-dev nlohmann-json3-dev
  rsync iproute2 util-linux e2fsprogs
  dpkg-dev lintian help2man
  nginx-light createrepo-c rpm dnf apt-utils
  libcpp-httplib-dev libsystemd-dev
  chromium fonts-dejavu-core prometheus curl
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
