#!/usr/bin/env bash
# Mobile builds of sca-mobile (UniFFI): Kotlin/Swift/Python bindings generated from the built
# library, and release static libraries for Android (aarch64-linux-android) and iOS
# (aarch64-apple-ios). A staticlib needs no linker, so both targets build on Linux without the
# NDK or Xcode; linking the app is the mobile developer's step (see crates/sca-mobile/README.md).
#
#   bash scripts/mobile.sh            # bindings + both targets, prints library sizes
#   bash scripts/mobile.sh bindings   # only regenerate the bindings into target/mobile/bindings
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
out=target/mobile
mkdir -p "$out"

echo "== bindings (Kotlin, Swift, Python) from the host library"
cargo build -q -p sca-mobile -p sca-uniffi-bindgen
lib=target/debug/libsca_mobile.so
for lang in kotlin swift python; do
  rm -rf "$out/bindings/$lang"
  ./target/debug/uniffi-bindgen generate --library "$lib" --language "$lang" \
    --out-dir "$out/bindings/$lang" >/dev/null
done
# The generated API must expose the object API (a rename in Rust shows up here).
grep -q "class ScaModel" "$out/bindings/kotlin/uniffi/sca_mobile/sca_mobile.kt"
grep -q "fun \`embedRgba\`\|fun embedRgba" "$out/bindings/kotlin/uniffi/sca_mobile/sca_mobile.kt"
grep -q "func captionStream" "$out/bindings/swift/sca_mobile.swift"
grep -q "class ScaError" "$out/bindings/python/sca_mobile.py"
echo "   written to $out/bindings/{kotlin,swift,python}"
[ "${1:-}" = bindings ] && exit 0

echo "== static libraries (release)"
for target in aarch64-linux-android aarch64-apple-ios; do
  if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target" || {
      echo "!! cannot install the $target target here: skipped (see crates/sca-mobile/README.md)"
      continue
    }
  fi
  cargo rustc -q --release -p sca-mobile --lib --target "$target" --crate-type staticlib
  a="target/$target/release/libsca_mobile.a"
  cp "$a" "$out/libsca_mobile-$target.a"
  # Debug info and local symbols out, as an app build would (the archive keeps the exported
  # symbols the bindings call).
  strip_tool=""
  for s in llvm-strip llvm-strip-14 llvm-strip-15 llvm-strip-16; do
    command -v "$s" >/dev/null && { strip_tool=$s; break; }
  done
  if [ -n "$strip_tool" ]; then
    "$strip_tool" --strip-debug "$out/libsca_mobile-$target.a"
  fi
  printf '   %-24s %8.1f MB (%s)\n' "$target" \
    "$(echo "$(stat -c %s "$out/libsca_mobile-$target.a") / 1000000" | bc -l)" \
    "${strip_tool:-not stripped: no llvm-strip}"
done
