#!/usr/bin/env bash
# Builds the click-to-caption page into web/dist/: the npm package (scripts/build-npm.sh),
# installed from its packed tarball as a user would, plus the page's own files.
# `sca serve` serves web/dist at / (and the bundle at /models/<name>/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-npm.sh
version="$(awk -F'"' '/^\[workspace.package\]/ {p=1} p && /^version/ {print $2; exit}' Cargo.toml)"
dist=web/dist
rm -rf "$dist" && mkdir -p "$dist"
cp web/index.html web/app.js web/style.css web/sw.js web/bench.html web/bench.js "$dist/"
echo '{"name": "sca-page", "private": true}' > "$dist/package.json"
(cd "$dist" && npm install --silent --no-audit --no-fund --no-package-lock \
  "../../target/npm/sca-wasm-$version.tgz")
echo "   page written to $dist"
