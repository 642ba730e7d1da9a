#!/usr/bin/env bash
# sca-core's unit tests compiled to WebAssembly with SIMD (wasm32-wasip1, +simd128 from
# .cargo/config.toml) and run under Node's WASI: the wasm-only kernels (ops::qmm's simd128 q8_0
# and q6_k products, which the browser build uses) against candle's, and every other unit test
# of the core in the same engine family the browser runs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "error: node not found (bash scripts/setup.sh installs it)" >&2; exit 1; }
rustup target list --installed | grep -qx wasm32-wasip1 || {
  echo "error: rust target wasm32-wasip1 missing: rustup target add wasm32-wasip1" >&2; exit 1; }
exe="$(cargo test -p sca-core --lib --target wasm32-wasip1 --no-run --message-format=json \
  | grep -o '"executable":"[^"]*\.wasm"' | tail -1 | cut -d'"' -f4)"
[ -n "$exe" ] || { echo "error: no wasm test program was built" >&2; exit 1; }
echo "== sca-core unit tests in wasm ($exe)"
# --single-threaded-gc: Node 20's concurrent GC has crashed while a wasm memory grows.
node --no-warnings --single-threaded-gc scripts/wasi-run.mjs "$exe" "$@"
