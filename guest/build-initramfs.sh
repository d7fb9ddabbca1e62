#!/bin/bash
# Build the test guest's initramfs: busybox (static) + virtio modules of the installed Debian kernel
# + guest/init.sh as /init.
#
#   guest/build-initramfs.sh [OUTDIR]        (default OUTDIR: <repo>/.cache/guest)
#
# The image lands in OUTDIR/<kernel version>-<hash>/ where the hash covers init.sh, this script,
# the module list and busybox, so changing any input rebuilds and otherwise the image is reused.
# The last line on stdout is a JSON manifest (also written to OUTDIR/<key>/guest.json):
#   {"kernel":"/boot/vmlinuz-...","initrd":".../initramfs.cpio.gz","kernelVersion":"...","key":"..."}
# Everything else goes to stderr.
#
# Environment: VUT_KERNEL_VERSION=<ver> picks a kernel (default: newest with modules + vmlinuz),
#              VUT_FORCE_REBUILD=1 ignores the cache.
# Needs (Debian 12): linux-image-amd64, busybox-static, kmod, cpio is NOT needed (busybox cpio),
#                    gzip; xz-utils / zstd only if the kernel's modules are compressed.
set -euo pipefail

# Modules in the guest, in load order; dependencies are resolved with modinfo and put first.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
         failover net_failover virtio_net)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUTDIR=${1:-$REPO/.cache/guest}
INIT=$HERE/init.sh

log() { echo "build-initramfs: $*" >&2; }
die() { echo "build-initramfs: ERROR: $*" >&2; exit 1; }
need_cmd() { # cmd package
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found: apt-get install -y $2"
}

need_cmd modinfo kmod
need_cmd gzip gzip
need_cmd sha256sum coreutils
need_cmd flock util-linux
[ -f "$INIT" ] || die "missing $INIT"

# --- busybox (must be static: the initramfs has no libc) ---------------------------------------
BUSYBOX=
for b in /bin/busybox /usr/bin/busybox; do
  [ -x "$b" ] || continue
  ldd_out=$(LC_ALL=C ldd "$b" 2>&1 || true)
  if grep -Eq 'not a dynamic executable|statically linked' <<<"$ldd_out"; then
    BUSYBOX=$b; break
  fi
done
[ -n "$BUSYBOX" ] || die "no statically linked busybox (/bin/busybox): apt-get install -y busybox-static"
for applet in sh insmod mount awk xxd dd sha256sum blockdev poweroff cpio ip ping nc mkfifo timeout usleep; do
  grep -qx "$applet" <<<"$("$BUSYBOX" --list)" || die "busybox at $BUSYBOX lacks '$applet': apt-get install -y busybox-static"
done

# --- kernel -----------------------------------------------------------------------------------
KVER=${VUT_KERNEL_VERSION:-}
if [ -z "$KVER" ]; then
  for d in $(ls -1 /lib/modules 2>/dev/null | sort -V -r); do
    if [ -f "/boot/vmlinuz-$d" ] && [ -d "/lib/modules/$d/kernel" ]; then KVER=$d; break; fi
  done
fi
[ -n "$KVER" ] || die "no kernel with both /boot/vmlinuz-<ver> and /lib/modules/<ver>: apt-get install -y linux-image-amd64"
KERNEL=/boot/vmlinuz-$KVER
[ -f "$KERNEL" ] || die "$KERNEL not found: apt-get install -y linux-image-amd64 (or unset VUT_KERNEL_VERSION)"
[ -r "$KERNEL" ] || die "$KERNEL is not readable (Debian installs it mode 0600): run as root"

# --- resolve modules (dependencies first, each once) ------------------------------------------
ORDER=()
declare -A SEEN=()
declare -A PATHS=()
resolve() {
  local m=$1 dep path deps
  [ -n "${SEEN[$m]:-}" ] && return 0
  SEEN[$m]=1
  path=$(modinfo -k "$KVER" -n "$m" 2>/dev/null) ||
    die "module $m not found for kernel $KVER (modinfo -k $KVER -n $m): apt-get install -y linux-image-amd64"
  if [ "$path" = "(builtin)" ] || [ "${path#/}" = "$path" ]; then
    log "module $m is built in"
    return 0
  fi
  deps=$(modinfo -k "$KVER" -F depends "$m" 2>/dev/null || true)
  for dep in ${deps//,/ }; do resolve "$dep"; done
  ORDER+=("$m")
  PATHS[$m]=$path
}
for m in "${MODULES[@]}"; do resolve "$m"; done

# --- cache key ----------------------------------------------------------------------------------
KEY_INPUT=$( {
  echo "kver=$KVER kernel=$KERNEL $(stat -c '%s %Y' "$KERNEL")"
  for m in "${ORDER[@]}"; do echo "$m ${PATHS[$m]} $(stat -c '%s %Y' "${PATHS[$m]}")"; done
  sha256sum "$INIT" "${BASH_SOURCE[0]}" "$BUSYBOX" | cut -d' ' -f1
} )
HASH=$(printf '%s' "$KEY_INPUT" | sha256sum | cut -c1-12)
KEY=$KVER-$HASH
DEST=$OUTDIR/$KEY
MANIFEST=$DEST/guest.json

mkdir -p "$OUTDIR"
exec 9>"$OUTDIR/.lock"
flock 9

if [ -z "${VUT_FORCE_REBUILD:-}" ] && [ -f "$MANIFEST" ] && [ -f "$DEST/initramfs.cpio.gz" ]; then
  touch "$DEST"
  log "cached: $DEST"
  cat "$MANIFEST"
  exit 0
fi

log "building $KEY (kernel $KERNEL; modules: ${ORDER[*]})"
STAGE=$(mktemp -d "$OUTDIR/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
ROOT=$STAGE/root
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,modules}
cp "$BUSYBOX" "$ROOT/bin/busybox"
ln -s busybox "$ROOT/bin/sh"
install -m 0755 "$INIT" "$ROOT/init"
: > "$ROOT/modules/order"
for m in "${ORDER[@]}"; do
  src=${PATHS[$m]}
  case "$src" in
    *.ko) cp "$src" "$ROOT/modules/$m.ko" ;;
    *.ko.xz) need_cmd xz xz-utils; xz -dc "$src" > "$ROOT/modules/$m.ko" ;;
    *.ko.zst) need_cmd zstd zstd; zstd -qdc "$src" > "$ROOT/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$src" > "$ROOT/modules/$m.ko" ;;
    *) die "unsupported module file $src" ;;
  esac
  echo "$m" >> "$ROOT/modules/order"
done
# Device nodes the kernel needs before devtmpfs is mounted.
if [ "$(id -u)" = 0 ]; then
  mknod -m 600 "$ROOT/dev/console" c 5 1
  mknod -m 666 "$ROOT/dev/null" c 1 3
fi

( cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc -R 0:0 2>/dev/null ) \
  | gzip -9 -n > "$STAGE/initramfs.cpio.gz"
printf '{"kernel":"%s","initrd":"%s","kernelVersion":"%s","key":"%s"}\n' \
  "$KERNEL" "$DEST/initramfs.cpio.gz" "$KVER" "$KEY" > "$STAGE/guest.json"

rm -rf "$DEST"
mkdir -p "$DEST"
mv "$STAGE/initramfs.cpio.gz" "$DEST/initramfs.cpio.gz"
mv "$STAGE/guest.json" "$MANIFEST"
# Drop stale images of earlier inputs (not used for an hour; a concurrent user touches its entry).
find "$OUTDIR" -mindepth 1 -maxdepth 1 -type d -name '*-*' ! -name '.*' ! -path "$DEST" -mmin +60 \
  -exec rm -rf {} + 2>/dev/null || true
log "built $DEST/initramfs.cpio.gz ($(stat -c %s "$DEST/initramfs.cpio.gz") bytes)"
cat "$MANIFEST"
