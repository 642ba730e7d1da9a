#!/usr/bin/env bash
# Runs every check and test of the repository (the README's test command; CI runs this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# A one-off build gains nothing from incremental state (gigabytes in target/).
[ -n "${CI:-}" ] && export CARGO_INCREMENTAL=0
export SCA_PARITY_DIR="${SCA_PARITY_DIR:-$(cd .. && pwd)/shared/parity}"
if [ ! -d "$SCA_PARITY_DIR" ]; then
  echo "error: parity fixtures not found at $SCA_PARITY_DIR (set SCA_PARITY_DIR to shared/parity)" >&2
  exit 1
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
# The UniFFI bindings generator the sca-mobile FFI test runs (cargo test builds no binaries of
# other packages).
cargo build -p sca-uniffi-bindgen
cargo test --workspace
# (scripts/wasm-check.sh, the same model under Node's WASI vs native, is a manual check now: the
# browser tests compare wasm with native in Chromium itself.)
bash scripts/test-wasm-core.sh
echo "== browser: the npm package and the page in headless Chromium"
bash scripts/test-browser.sh
echo "== mobile: bindings + static libraries for Android and iOS"
bash scripts/mobile.sh
echo "== done; build output: $(du -sh target 2>/dev/null | cut -f1)"
