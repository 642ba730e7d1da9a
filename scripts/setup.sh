#!/usr/bin/env bash
# Installs everything the build and the tests need on a fresh Debian machine. Idempotent: each
# step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: OpenBLAS (fast sgemm for the native CPU path); the browser tests' Chromium;
# lavapipe (Vulkan on the CPU) for the native WebGPU encoder tests.
APT_PACKAGES=(libopenblas-dev pkg-config chromium mesa-vulkan-drivers)
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
# The browser build: wasm targets, Node.js, wasm-bindgen-cli, the npm tools.
bash scripts/setup-web.sh

# METEOR 1.5 data (WordNet synonyms, paraphrase table, function words) for sca-metrics.
if [ -f scripts/setup-meteor.sh ]; then
  bash scripts/setup-meteor.sh
fi

# ONNX Runtime library for the export tests (ort, load-dynamic); path also in ORT_DYLIB_PATH.
ORT_DYLIB_PATH="$(bash scripts/setup-onnxruntime.sh)"; export ORT_DYLIB_PATH
