#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library that the `ort` crate loads at run time
# (load-dynamic): the PyPI onnxruntime 1.32.0 wheel, unpacked into .cache/onnxruntime/.
# Idempotent. Prints the library path; export it as ORT_DYLIB_PATH (the export tests also find
# it there by default).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.32.0
DEST=.cache/onnxruntime
LIB="$DEST/libonnxruntime.so.$VERSION"

if [ ! -f "$LIB" ]; then
  mkdir -p .cache "$DEST"
  wheel=$(ls .cache/onnxruntime-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "setup-onnxruntime: pip download --no-deps onnxruntime==$VERSION" >&2
    python3 -m pip download --no-deps --only-binary=:all: "onnxruntime==$VERSION" -d .cache >&2
    wheel=$(ls .cache/onnxruntime-"$VERSION"-*.whl | head -n1)
  fi
  python3 - "$wheel" "$LIB" <<'PY'
import os, sys, zipfile
wheel, lib = sys.argv[1], sys.argv[2]
member = "onnxruntime/capi/" + os.path.basename(lib)
tmp = lib + ".tmp"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as dst:
    dst.write(src.read())
os.replace(tmp, lib)
PY
fi
realpath "$LIB"
