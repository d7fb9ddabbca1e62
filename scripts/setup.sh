#!/usr/bin/env bash
# Installs what vhost-user-ts needs on a fresh Debian 12 machine (as root), then builds it.
# Idempotent: only missing Debian packages are installed, npm ci runs when the lock file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# clang-format: npm run format:native:check (lint of native/ring). dpdk, dpdk-dev: dpdk-testpmd, the
# virtio-user front-end the net tests drive our back-end with.
packages=(build-essential python3 liburing-dev clang-format qemu-system-x86 qemu-utils linux-image-amd64 busybox-static fio dpdk dpdk-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm ci builds the native addon and compiles the TypeScript (prepare). --build-from-source:
# the install script (node-gyp-build) would otherwise settle for an addon that already loads,
# such as a prebuilds/ left by an earlier `npm pack`; here the tests run the sources' own build.
stamp=node_modules/.vhost-user-ts-lock
addon=build/Release/ring.node
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund --build-from-source
  cp package-lock.json "$stamp"
else
  # Rebuild the addon when a native source or binding.gyp changed since it was built.
  if [ ! -f "$addon" ] || [ -n "$(find native/ring binding.gyp -newer "$addon" -print -quit)" ]; then
    npm run --silent build:native
  fi
  npm run --silent build
fi
