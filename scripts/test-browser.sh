#!/usr/bin/env bash
# Browser tests: builds the npm package and the page (scripts/build-web.sh) and the native `sca`
# (the reference), then runs tests/browser/*.test.mjs in headless Chromium (playwright-core).
# Screenshots: target/browser-tests/. Needs what scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
[ -x /usr/bin/chromium ] || { echo "error: /usr/bin/chromium missing: run bash scripts/setup.sh (apt-get install -y chromium)" >&2; exit 1; }
[ -d tests/browser/node_modules/playwright-core ] || {
  echo "error: playwright-core missing: run bash scripts/setup.sh (or: cd tests/browser && npm ci)" >&2; exit 1; }
echo "== the package's TypeScript types (tsc --noEmit on tests/browser/types/usage.ts)"
tests/browser/node_modules/.bin/tsc -p tests/browser/types
bash scripts/build-web.sh
cargo build -q -p sca-cli
export SCA_BIN="$PWD/target/debug/sca"
export SCA_BROWSER_OUT="$PWD/target/browser-tests"
rm -rf "$SCA_BROWSER_OUT"
# A private runtime dir quiets Chromium's and lavapipe's warnings about a missing one.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
chmod 700 "$XDG_RUNTIME_DIR"
node --test --test-concurrency=1 --test-reporter=spec tests/browser/
