#!/usr/bin/env bash
# The whole test suite (what CI runs): set up, then vitest over test/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npx vitest run "$@"
