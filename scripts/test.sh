#!/usr/bin/env bash
# The whole test suite (what CI runs): set up, lint, then vitest over test/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Lint first: ESLint (type-aware), Prettier, the test files' types and clang-format on native/ring.
npm run -s lint
# QEMU's vhost-user-blk qtests (test/qtest) need qos-test, built once per machine from the Debian
# QEMU source by ../shared/peers/qemu-qtest/build.sh and cached in ~/.cache/qemu-qtest. Built here,
# before the suite, so the few minutes of compiling do not compete with timing-sensitive tests.
# If it is missing or fails, test/qtest fails and says what to run.
qtest_build="$(git rev-parse --show-toplevel 2>/dev/null || pwd)/../shared/peers/qemu-qtest/build.sh"
if [ -f "$qtest_build" ]; then
  started=$SECONDS
  bash "$qtest_build" >/dev/null || echo "test: building qos-test failed; test/qtest will fail" >&2
  echo "test: qos-test ready after $((SECONDS - started)) s"
fi
npx vitest run "$@"
