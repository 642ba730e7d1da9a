#!/usr/bin/env bash
# Builds the npm package `sca-wasm` into target/npm/sca-wasm/ and packs it to
# target/npm/sca-wasm-VERSION.tgz: sca-wasm (Rust, wasm32-unknown-unknown, SIMD) ->
# wasm-bindgen --target web -> wasm-opt (when installed) + the JS wrapper, worker and types.
# Needs what scripts/setup.sh installs (the wasm target, wasm-bindgen-cli of the version in
# Cargo.lock, node/npm; binaryen for wasm-opt).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
want="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')"
if [ "$have" != "$want" ]; then
  echo "error: wasm-bindgen-cli $want is needed (found: ${have:-none}); run: bash scripts/setup.sh" \
    "(or: cargo install wasm-bindgen-cli --version $want)" >&2
  exit 1
fi
command -v npm >/dev/null || { echo "error: npm not found; run: bash scripts/setup.sh" >&2; exit 1; }

version="$(awk -F'"' '/^\[workspace.package\]/ {p=1} p && /^version/ {print $2; exit}' Cargo.toml)"
out=target/npm/sca-wasm
echo "== sca-wasm $version: cargo build (wasm32-unknown-unknown, release)"
cargo build --release -p sca-wasm --target wasm32-unknown-unknown
# Nothing to do when the wasm, the JS sources and the version are those of the last package.
stamp_file=target/npm/.sca-wasm.stamp
stamp="$(cat target/wasm32-unknown-unknown/release/sca_wasm.wasm crates/sca-wasm/js/* | sha256sum | cut -c1-64) $version"
if [ -f "target/npm/sca-wasm-$version.tgz" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
  echo "   package up to date: target/npm/sca-wasm-$version.tgz"
  exit 0
fi
rm -rf "$out" "$stamp_file" && mkdir -p "$out"
wasm-bindgen --target web --no-typescript --out-dir "$out" \
  target/wasm32-unknown-unknown/release/sca_wasm.wasm
# binaryen from npm (tests/browser's lock file; Debian's v108 cannot parse wasm-bindgen's output).
wasm_opt=tests/browser/node_modules/.bin/wasm-opt
if [ -x "$wasm_opt" ]; then
  "$wasm_opt" -O2 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue "$out/sca_wasm_bg.wasm" -o "$out/sca_wasm_bg.opt.wasm"
  mv "$out/sca_wasm_bg.opt.wasm" "$out/sca_wasm_bg.wasm"
else
  echo "   (wasm-opt not found: the wasm is not size-optimised; bash scripts/setup.sh installs it)"
fi
cp crates/sca-wasm/js/{index.js,index.d.ts,coco.js,worker.js,README.md} "$out/"
sed "s/\"0.0.0-set-by-build\"/\"$version\"/" crates/sca-wasm/js/package.json > "$out/package.json"
(cd target/npm && rm -f "sca-wasm-$version.tgz" && npm pack --silent ./sca-wasm >/dev/null)
printf '   wasm %.1f MB, package %s (%.1f MB)\n' \
  "$(echo "$(stat -c %s "$out/sca_wasm_bg.wasm") / 1000000" | bc -l)" \
  "target/npm/sca-wasm-$version.tgz" \
  "$(echo "$(stat -c %s "target/npm/sca-wasm-$version.tgz") / 1000000" | bc -l)"
echo "$stamp" > "$stamp_file"
