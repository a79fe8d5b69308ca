#!/usr/bin/env bash
# The faster CPU graph (issue 15 item 2), measured against today's in one run: every command behind
# bench/results/throughput_cpu.{md,json} and throughput_verify_*.json.
#
#   bench/throughput_cpu.sh [STEP...]    steps: export latency verify (default: all)
#
# export : today's ONNX 4-bit bundle of the built-in demo (`export --bits 4 --backend onnx`, encoder fp32 + int8),
#          then two re-tuned copies (export/onnx_llm.py retune_bundle: same weights), one change each so their
#          effects stay apart: demo-onnx4-acc4 (MatMulNBits accuracy level 4: int8 activations/compute) and
#          demo-onnx4-int8enc (encoder graphs optimised offline, the dynamic int8 encoder as default), and both
#          together: demo-onnx4-fast (what `export --backend onnx --accuracy-level 4 --optimize-encoder` builds,
#          with the int8 encoder as default).
# latency: one `respi-edge bench latency` run with today's bundle first, so the new/old ratios compare rows of the
#          same run (the first row also times the issue-14 path, past fed per call); `uptime` before and after.
# verify : AUROC drift of each new variant against the full-precision demo (and of today's bundle, for the same
#          rows) on SPRSound test_intra, and of each new variant against today's bundle (the change alone);
#          LIMIT=N verifies N rows spread evenly over it (a documented subset). VERIFY_VS_OLD_ONLY=1: only the latter.
#
# Bundles go to $BUNDLES (default /tmp/bundles-tput); existing bundles are kept (delete them after retraining the
# demo). Run it on an idle machine for final timings: timings under load move, their ratios much less.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${RESPI_EDGE_SHARED:-$(cd .. && pwd)/shared}
DATA=$SHARED/data/sprsound2022/test_intra.csv
BUNDLES=${BUNDLES:-/tmp/bundles-tput}
WORK=${WORK:-/tmp/respi-tput}
OUT=${OUT:-bench/results}
REPEAT=${REPEAT:-30}
STEPS=${*:-export latency verify}
mkdir -p "$BUNDLES" "$WORK"
has() { [[ " $STEPS " == *" $1 "* ]]; }
OLD=$BUNDLES/demo-onnx4 FAST=$BUNDLES/demo-onnx4-acc4 FAST8=$BUNDLES/demo-onnx4-int8enc BOTH=$BUNDLES/demo-onnx4-fast

if has export; then
  [ -f "$OLD/manifest.json" ] || respi-edge export --bits 4 --backend onnx --encoder-variants int8 --out "$OLD" >&2
  python - "$OLD" "$FAST" "$FAST8" "$BOTH" <<'EOF'
import sys
from pathlib import Path

from respi_edge.export.onnx_llm import retune_bundle

old, fast, fast8, both = map(Path, sys.argv[1:])
if not (fast / "manifest.json").is_file():
    retune_bundle(old, fast, accuracy_level=4, optimize_encoder=False)
if not (fast8 / "manifest.json").is_file():
    retune_bundle(old, fast8, accuracy_level=None, optimize_encoder=True, encoder_default="int8")
if not (both / "manifest.json").is_file():
    retune_bundle(old, both, accuracy_level=4, optimize_encoder=True, encoder_default="int8")
EOF
fi

if has latency; then
  LOAD_BEFORE=$(uptime)
  respi-edge bench latency --bundle "$OLD" --bundle "$FAST" --bundle "$FAST8" --bundle "$BOTH" --repeat "$REPEAT" --warmup 3 \
    --device cpu --out "$WORK/throughput_cpu" >&2
  LOAD_AFTER=$(uptime)
  python - "$WORK/throughput_cpu" "$OUT/throughput_cpu" "$LOAD_BEFORE" "$LOAD_AFTER" <<'EOF'
import json
import sys
from pathlib import Path

from respi_edge.runtime import atomic

src, dst, before, after = sys.argv[1:]
doc = json.loads(Path(src + ".json").read_text())
doc["load"] = {"before": before.strip(), "after": after.strip()}
atomic.write_json(Path(dst + ".json"), doc)
md = Path(src + ".md").read_text().split("\n", 1)
atomic.write_text(Path(dst + ".md"), md[0] + "\n" + f"Load (`uptime`): before: {before.strip()}; after: "
                  f"{after.strip()}  \n" + md[1])
EOF
fi

if has verify; then
  MAN=$DATA
  if [ -n "${LIMIT:-}" ]; then  # LIMIT rows spread evenly over the manifest (every k-th row), absolute paths
    MAN=$WORK/test_intra_every_${LIMIT}.csv
    python - "$DATA" "$LIMIT" "$MAN" <<'EOF'
import csv
import sys
from pathlib import Path

src, limit, dst = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rows = list(csv.DictReader(open(src)))
pick = rows[::max(1, len(rows) // limit)][:limit]
with open(dst, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows({**r, "path": str(src.parent / r["path"])} for r in pick)
EOF
  fi
  for b in $([ -n "${VERIFY_VS_OLD_ONLY:-}" ] || echo "$OLD $FAST $FAST8 $BOTH"); do
    name=$(basename "$b")${LIMIT:+-every$LIMIT}
    respi-edge verify --bundle "$b" --data "$MAN" --bootstrap 1000 --json --out "$WORK/verify/$name" \
      > "$WORK/$name.json.tmp"
    mv "$WORK/$name.json.tmp" "$OUT/throughput_verify_$name.json"
  done
  tag=${LIMIT:+-every$LIMIT}
  for b in "$FAST" "$FAST8" "$BOTH"; do  # the change alone: each new variant against today's bundle
    name=$(basename "$b")-vs-demo-onnx4$tag
    respi-edge verify --bundle "$b" --reference "$OLD" --data "$MAN" --bootstrap 1000 --json \
      --out "$WORK/verify/$name" > "$WORK/$name.json.tmp"
    mv "$WORK/$name.json.tmp" "$OUT/throughput_verify_$name.json"
  done
fi
