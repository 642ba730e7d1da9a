#!/usr/bin/env bash
# Times pycocoevalcap 1.2 (Python + Java, installed from PyPI into a venv under .cache/) against
# the Rust implementation on the same synthetic Visual-Genome-style corpus, and checks that the
# corpus scores agree. Needs python3 with venv/pip, Java (for pycocoevalcap) and cargo.
#
#   bash scripts/compare-pycocoevalcap.sh [N_REGIONS]     (default 230000)
#
# REUSE_PYCOCO=1 reuses a previous pycocoevalcap run on the same N (it takes minutes).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-230000}"
CACHE="$REPO/.cache"
VENV="$CACHE/venv-pycocoevalcap"
WORK="$CACHE/compare"
PYTHON="${PYTHON:-python3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
mkdir -p "$WORK"

bash "$REPO/scripts/setup-meteor.sh"
export SCA_METEOR_DATA="${SCA_METEOR_DATA:-$CACHE/meteor}"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import pycocoevalcap" 2>/dev/null; then
    # Reuse the wheel that setup-meteor.sh downloaded, if it is there.
    "$VENV/bin/pip" install --quiet --find-links "$CACHE/pip-meteor" "pycocoevalcap==1.2"
fi

CORPUS="$WORK/vg_synthetic_$N.json"
cargo bench --quiet -p sca-metrics --bench score -- --regions "$N" --write-corpus "$CORPUS"

now() { date +%s.%N; }
elapsed() { "$PYTHON" -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$1" "$2"; }

if [[ "${REUSE_PYCOCO:-0}" == 1 && -s "$WORK/pycoco_$N.json" && -s "$WORK/pycoco_$N.wall" ]]; then
    echo "== pycocoevalcap 1.2 on $N regions: reusing $WORK/pycoco_$N.json =="
    PY_WALL=$(cat "$WORK/pycoco_$N.wall")
else
    echo "== pycocoevalcap 1.2 on $N regions (this takes a while) =="
    t0=$(now)
    "$VENV/bin/python" "$REPO/scripts/pycocoevalcap_score.py" "$CORPUS" > "$WORK/pycoco_$N.json"
    t1=$(now)
    PY_WALL=$(elapsed "$t0" "$t1")
    echo "$PY_WALL" > "$WORK/pycoco_$N.wall"
fi
cat "$WORK/pycoco_$N.json"; echo

echo "== Rust (sca-metrics) on the same corpus =="
# Build first so that compile time is not counted.
cargo bench --no-run --quiet -p sca-metrics --bench score 2>/dev/null
SCA_BIN="$CARGO_TARGET_DIR/release/sca"
t0=$(now)
if [[ -x "$SCA_BIN" ]] && "$SCA_BIN" score --help >/dev/null 2>&1; then
    RUST_HOW="sca score --json"
    "$SCA_BIN" score --json --corpus "$CORPUS" > "$WORK/rust_$N.full.json"
    "$PYTHON" -c "import json,sys; d=json.load(open(sys.argv[1])); d.pop('per_region'); print(json.dumps(d))" \
        "$WORK/rust_$N.full.json" > "$WORK/rust_$N.json"
else
    RUST_HOW="cargo bench --bench score -- --corpus (sca score not built)"
    cargo bench --quiet -p sca-metrics --bench score -- --corpus "$CORPUS" --json "$WORK/rust_$N.json"
fi
t1=$(now)
RS_WALL=$(elapsed "$t0" "$t1")
cat "$WORK/rust_$N.json"; echo

"$PYTHON" - "$WORK/pycoco_$N.json" "$WORK/rust_$N.json" "$PY_WALL" "$RS_WALL" "$RUST_HOW" <<'PY'
import json, sys
py = json.load(open(sys.argv[1]))["scores"]
rs = json.load(open(sys.argv[2]))
py_wall, rs_wall, how = float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
print(f"{'metric':<8} {'pycocoevalcap':>15} {'sca-metrics':>15} {'|diff|':>10}")
worst = 0.0
for k in ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider_d"]:
    d = abs(py[k] - rs[k])
    worst = max(worst, d if k != "meteor" else 0.0)
    print(f"{k:<8} {py[k]:>15.10f} {rs[k]:>15.10f} {d:>10.2e}")
print(f"pycocoevalcap end to end: {py_wall:8.1f} s")
print(f"sca-metrics   end to end: {rs_wall:8.1f} s   ({how})")
print(f"speed-up: {py_wall / rs_wall:.1f}x")
PY
