#!/usr/bin/env bash
# Installs the METEOR 1.5 data that `sca-metrics` needs (function words, WordNet synsets and
# exceptions, non-breaking prefixes, the English paraphrase table) into
#   ${SCA_METEOR_DATA:-<repo>/.cache/meteor}
#
# The data comes from the PyPI package `pycocoevalcap` 1.2, which ships METEOR's
# `meteor-1.5.jar` (a zip holding the word lists) and `data/paraphrase-en.gz`. Only pip and
# python3 are needed (the zip handling is python's zipfile): no Java, no unzip, no apt package.
# Idempotent: a complete install is detected and left alone; re-running repairs a partial one.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${SCA_METEOR_DATA:-$REPO/.cache/meteor}"
WHEEL_CACHE="${SCA_METEOR_WHEEL_CACHE:-$REPO/.cache/pip-meteor}"
PYTHON="${PYTHON:-python3}"
STAMP="$DEST/.sca-meteor-data-v1"

if [[ -f "$STAMP" ]]; then
    echo "METEOR data already installed in $DEST"
    exit 0
fi

mkdir -p "$WHEEL_CACHE" "$DEST"
WHEEL="$WHEEL_CACHE/pycocoevalcap-1.2-py3-none-any.whl"
if [[ ! -f "$WHEEL" ]]; then
    echo "Downloading pycocoevalcap 1.2 (about 100 MB) into $WHEEL_CACHE ..."
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$WHEEL_CACHE" "pycocoevalcap==1.2"
fi

"$PYTHON" - "$WHEEL" "$DEST" <<'PY'
import hashlib, io, os, sys, zipfile

wheel, dest = sys.argv[1], sys.argv[2]
# sha256 of every file we install, as shipped in pycocoevalcap 1.2.
want = {
    "function/english.words": "2ae0d5b8c29e2993a0f442b065b946d1a17fbfe8538e66bf5931c4a248cf4c3a",
    "synonym/english.synsets": "20b7cf6ae1cba2395d714d8c2ec2992e88c6d1c75c7c30aa480c6a2a9bb8fef9",
    "synonym/english.exceptions": "5feb8fcb5b349d035df1a448149c2ccc860bf32e4b9eea8c8e4f113e90a5a962",
    "nonbreaking/english.prefixes": "bd909f364224748976f9b8b7cdeb4f9be3bf7c8e66a10f1ed268b12d904ab876",
    "paraphrase-en.gz": "c147ac7d2c91f2fbb3ad31e4b352235061eb83145e0434daf217ee9ca5975f48",
}
extra = ["synonym/COPYING.WORDNET"]

def write(rel, data):
    path = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)

def check(rel, data):
    digest = hashlib.sha256(data).hexdigest()
    if rel in want and digest != want[rel]:
        sys.exit(f"error: {rel} has sha256 {digest}, expected {want[rel]}")

with zipfile.ZipFile(wheel) as whl:
    para = whl.read("pycocoevalcap/meteor/data/paraphrase-en.gz")
    check("paraphrase-en.gz", para)
    write("paraphrase-en.gz", para)
    with zipfile.ZipFile(io.BytesIO(whl.read("pycocoevalcap/meteor/meteor-1.5.jar"))) as jar:
        for rel in [k for k in want if k != "paraphrase-en.gz"] + extra:
            data = jar.read(rel)
            check(rel, data)
            write(rel, data)
print(f"METEOR 1.5 data installed in {dest}")
PY

touch "$STAMP"
if [[ "$DEST" != "$REPO/.cache/meteor" ]]; then
    echo "Use it with: export SCA_METEOR_DATA=$DEST"
fi
