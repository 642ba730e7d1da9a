#!/usr/bin/env bash
# sca-core in WebAssembly (the browser build itself is scripts/build-npm.sh's): builds the
# `region` example for wasm32-wasip1, runs it under Node's
# WASI on the bundled model (q8_0 decoder: quantized matmuls) and natively, and requires the
# the same caption tokens, masks with IoU >= 0.99 between the two (the threshold of the browser
# tests) and predicted IoU within 0.01 (the wasm build has no AVX: quantized dot products round
# and accumulate in another order, which moves a few boundary pixels).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "error: node not found (bash scripts/setup.sh installs it)" >&2; exit 1; }
rustup target list --installed | grep -qx wasm32-wasip1 || {
  echo "error: rust target wasm32-wasip1 missing: rustup target add wasm32-wasip1" >&2; exit 1; }
cargo build --release -p sca-core --example region --target wasm32-wasip1
cargo build --release -p sca-core --example region
root="$(pwd)"
fail=0
while read -r image box; do
  args=("$root/models/sca-shapes" "$root/models/sca-shapes/examples/$image" "$box")
  native="$(target/release/examples/region "${args[@]}")"
  wasm="$(node --no-warnings scripts/wasi-run.mjs target/wasm32-wasip1/release/examples/region.wasm "${args[@]}")"
  python3 - "$native" "$wasm" "$image $box" <<'PY' || fail=1
import json, sys
n, w, what = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
errs = []
if n["tokens"] != w["tokens"]:
    errs.append(f"tokens {n['tokens']} vs {w['tokens']}")
def pixels(runs):
    on, pos = set(), 0
    for i, r in enumerate(runs):
        if i % 2:
            on.update(range(pos, pos + r))
        pos += r
    return on
a, b = pixels(n["mask0_runs"]), pixels(w["mask0_runs"])
miou = len(a & b) / max(len(a | b), 1)
if miou < 0.99:
    errs.append(f"mask IoU {miou:.4f} < 0.99")
for a, b in zip(n["iou"], w["iou"]):
    if abs(a - b) > 0.01:
        errs.append(f"iou {a} vs {b}")
print(f"{what}: native {n['caption']!r}, wasm {w['caption']!r}, iou {n['iou'][0]:.4f}/{w['iou'][0]:.4f}, mask IoU {miou:.4f}"
      + ("" if not errs else "  FAIL: " + "; ".join(errs)))
sys.exit(1 if errs else 0)
PY
done <<'CASES'
shapes-777-0.png 148,114,225,191
shapes-777-1.png 101,115,134,148
shapes-777-2.png 112,153,185,226
CASES
exit $fail
