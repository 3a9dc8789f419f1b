#!/usr/bin/env bash
# The whole test suite: typecheck, unit tests, then the kernel tests (each file in its own lab).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== typecheck"
node_modules/.bin/tsc --noEmit
echo "== tests"
unset NODE_EXTRA_CA_CERTS
exec scripts/node --test --test-concurrency=2 --test-timeout=900000 \
  'test/unit/**/*.test.ts' 'test/lab/**/*.test.ts'
