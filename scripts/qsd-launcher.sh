#!/bin/sh
# A qemu-storage-daemon stand-in: QEMU's qtests (QTEST_QEMU_STORAGE_DAEMON_BINARY) and anything
# else that starts qemu-storage-daemon exports run our vhost-user-blk with the same arguments.
# VHOST_USER_BLK_POLL picks the poll mode (busy | interrupt | adaptive, default adaptive),
# VHOST_USER_BLK_CPUS the worker CPUs (default 1), NODE the node binary (default: node on PATH).
here=$(cd "$(dirname "$0")" && pwd)
exec "${NODE:-node}" "$here/../bin/vhost-user-blk" --qsd-compat \
  --poll "${VHOST_USER_BLK_POLL:-adaptive}" --cpus "${VHOST_USER_BLK_CPUS:-1}" "$@"
