#!/usr/bin/env bash
# The main job: set up, then boot a guest on our vhost-user-blk back-end (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/vhost-user-demo "$@"
