#!/usr/bin/env bash
# The README's main job: set up what serving needs on a fresh Debian machine (OpenBLAS, the
# ONNX Runtime library), build, and start the server on 127.0.0.1:8080 with the bundled model,
# printing the URL. Idempotent set-up; extra arguments go to `sca serve` (e.g. --addr HOST:PORT).
#
#   SCA_MODEL  model directory (default: models/sca-shapes, the bundled model)
#   SCA_BIN    a prebuilt `sca-server` or `sca` binary to run instead of `cargo run --release`
#              (`sca` gets the `serve` subcommand)
#   SCA_SKIP_WEB=1  do not (re)build the page in web/dist
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${SCA_MODEL:-models/sca-shapes}"

# Debian packages: OpenBLAS for the native CPU path (the same step as scripts/setup.sh).
missing=()
for p in libopenblas-dev pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "serve: apt-get install ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The click-to-caption page (web/dist: the npm package sca-wasm + web/), served at /.
if [ -z "${SCA_SKIP_WEB:-}" ]; then
  bash scripts/setup-web.sh
  bash scripts/build-web.sh
fi

# ONNX Runtime for the image encoder; without it the server uses the candle encoder.
if ORT="$(bash scripts/setup-onnxruntime.sh)"; then
  export ORT_DYLIB_PATH="$ORT"
else
  echo "serve: ONNX Runtime could not be installed; the server will use the candle encoder" >&2
fi

if [ ! -f "$MODEL/manifest.json" ] && [ ! -f "$MODEL/config.json" ]; then
  echo "serve: no model at $MODEL (a bundle with manifest.json or a checkpoint with config.json)." >&2
  echo "       Export one with: cargo run --release -p export -- bundle --from CHECKPOINT --out $MODEL" >&2
  echo "       or set SCA_MODEL to a model directory." >&2
  exit 1
fi

# 127.0.0.1:8080 unless the arguments name another address.
ADDR=(--addr 127.0.0.1:8080)
for a in "$@"; do
  case "$a" in --addr|--addr=*) ADDR=() ;; esac
done

if [ -n "${SCA_BIN:-}" ]; then
  case "$(basename "$SCA_BIN")" in
    sca) exec "$SCA_BIN" serve --model "$MODEL" "${ADDR[@]}" "$@" ;;
    *) exec "$SCA_BIN" --model "$MODEL" "${ADDR[@]}" "$@" ;;
  esac
fi
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
exec cargo run --release -p sca-cli -- serve --model "$MODEL" "${ADDR[@]}" "$@"
