#!/usr/bin/env bash
# Installs what the browser build (scripts/build-npm.sh, scripts/build-web.sh) and the browser
# tests need: the wasm targets, Node.js, wasm-bindgen-cli, and tests/browser's npm packages.
# Idempotent. Called by scripts/setup.sh and scripts/serve.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

# WebAssembly targets: the browser's (sca-core must build for it) and WASI (scripts/wasm-check.sh
# runs the model under Node's WASI).
for t in wasm32-unknown-unknown wasm32-wasip1; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t"
done
# Node.js and npm: the WASI run, the npm package build, the browser tests.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup: apt-get install nodejs npm"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi

# wasm-bindgen-cli of exactly the wasm-bindgen version in Cargo.lock (the npm package build).
WB="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WB" ]; then
  echo "setup: cargo install wasm-bindgen-cli $WB (about 4 minutes)"
  # Not --locked: a locked dependency of the CLI is missing from the index.
  cargo install -q wasm-bindgen-cli --version "$WB"
fi

# playwright-core (drives /usr/bin/chromium in the browser tests), binaryen (wasm-opt for the
# npm package) and typescript (checks the package's types), from tests/browser's lock file.
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/binaryen ] \
  || [ ! -d tests/browser/node_modules/typescript ]; then
  echo "setup: npm ci in tests/browser"
  (cd tests/browser && npm ci --silent --no-audit --no-fund)
fi
