#!/usr/bin/env bash
# Installs what vhost-user-ts needs on a fresh Debian 12 machine (as root), then builds it.
# Idempotent: only missing Debian packages are installed, npm ci runs when the lock file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential python3 liburing-dev qemu-system-x86 qemu-utils linux-image-amd64 busybox-static fio dpdk dpdk-dev)
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

# npm ci builds the native addon (node-gyp) and compiles the TypeScript (prepare).
stamp=node_modules/.vhost-user-ts-lock
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
else
  npm run --silent build
fi
