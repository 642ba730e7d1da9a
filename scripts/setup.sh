#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian machine. Idempotent: each
# step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: OpenBLAS (fast sgemm for the native CPU path), unzip/python for METEOR data.
APT_PACKAGES=(libopenblas-dev pkg-config)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Rust components used by the checks.
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
# WebAssembly targets: the browser's (sca-core must build for it) and WASI (scripts/wasm-check.sh
# runs the model under Node's WASI).
for t in wasm32-unknown-unknown wasm32-wasip1; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t"
done
# Node.js runs the WASI build.
if ! command -v node >/dev/null; then
  echo "setup: apt-get install nodejs"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs >/dev/null
fi

# METEOR 1.5 data (WordNet synonyms, paraphrase table, function words) for sca-metrics.
if [ -f scripts/setup-meteor.sh ]; then
  bash scripts/setup-meteor.sh
fi

# ONNX Runtime library for the export tests (ort, load-dynamic); path also in ORT_DYLIB_PATH.
ORT_DYLIB_PATH="$(bash scripts/setup-onnxruntime.sh)"; export ORT_DYLIB_PATH
