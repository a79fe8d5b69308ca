#!/usr/bin/env bash
# The commands behind bench/results/drift_test_intra.{md,json}: export the demo model every way a user can,
# verify each bundle against the full-precision model on SPRSound test_intra, collect the reports.
#
#   bench/drift_test_intra.sh [STEP...]    steps: calib export verify recalibrate val table (default: all)
#
# VERIFY="demo-16:fp32 demo-4budget" and RECAL="demo-4budget" narrow the verify and recalibrate steps to some bundles
# (NAME:ENCODER_VARIANT), EXPORTS="demo-8 demo-4" the export step; the table step merges the new reports into the committed tables, so one re-run row replaces
# only its own.
#
# Bundles go to $BUNDLES (default /tmp/bundles), reports to $WORK (default /tmp/respi-drift). Every step is
# resumable: an existing bundle is kept, verify reuses the scores it already wrote (reference scores are cached
# under ~/.cache/respi-edge/verify), so a killed run continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${RESPI_EDGE_SHARED:-$(cd .. && pwd)/shared}
DATA=$SHARED/data/sprsound2022/test_intra.csv
BUNDLES=${BUNDLES:-/tmp/bundles}
WORK=${WORK:-/tmp/respi-drift}
CALIB=$WORK/calib/val.csv
BUDGET=${BUDGET:-0.01}
STEPS=${*:-calib export verify recalibrate val table}
mkdir -p "$BUNDLES" "$WORK/reports" "$WORK/verify"

has() { [[ " $STEPS " == *" $1 "* ]]; }

export_once() {  # NAME ARGS...: export unless the bundle is already there (or EXPORTS is set and omits it)
  local name=$1; shift
  [ -f "$BUNDLES/$name/manifest.json" ] && return 0
  [ -n "${EXPORTS:-}" ] && [[ " $EXPORTS " != *" $name "* ]] && return 0
  echo "== export $name: $*" >&2
  /usr/bin/time -f "$name: %e s, peak RSS %M KB" respi-edge export "$@" --out "$BUNDLES/$name" > /dev/null
}

verify_one() {  # NAME [VARIANT] [TAG]: one verify report, JSON kept under $WORK/reports; a re-calibrated copy
  # shares its original's score folder (scores are keyed by the weight files, not the threshold)
  local name=$1 variant=${2:-} tag=${3:-}
  local id=$name${variant:+-$variant}$tag
  echo "== verify $id" >&2
  respi-edge verify --bundle "$BUNDLES/$name" ${variant:+--encoder-variant "$variant"} --data "$DATA" \
    --bootstrap 1000 --json --out "$WORK/verify/${id%-recal}" > "$WORK/reports/$id.json.tmp"
  mv "$WORK/reports/$id.json.tmp" "$WORK/reports/$id.json"
}

if has calib; then  # the demo's validation split: never fitted, no test_intra patient
  RESPI_EDGE_DATA=$SHARED/data python -m respi_edge.bench.calibration_set --recipe configs/recipes/sprsound_demo.yaml --out "$CALIB"
fi

if has export; then
  export_once demo-16 --bits 16 --encoder-variants fp16,int8 --calibration "$CALIB"
  export_once demo-8 --bits 8 --encoder-variants ''
  export_once demo-4 --bits 4 --encoder-variants ''
  export_once demo-4fp4 --bits 4 --quant fp4 --encoder-variants ''
  export_once demo-onnx4 --bits 4 --backend onnx --encoder-variants ''
  export_once demo-4budget --bits 4 --encoder-variants '' --calibration "$CALIB" --no-static-int8 \
    --max-drift "$BUDGET"
fi

if has verify; then
  for item in ${VERIFY:-demo-16:fp32 demo-16:fp16 demo-16:int8 demo-16:int8-static demo-4budget demo-8 demo-4 demo-4fp4 \
      demo-onnx4}; do
    if [[ $item == *:* ]]; then verify_one "${item%%:*}" "${item#*:}"; else verify_one "$item"; fi
  done
fi

if has recalibrate; then  # each quantized bundle's own threshold (Youden on the validation split), verified again
  for b in ${RECAL:-demo-8 demo-4 demo-4budget demo-onnx4}; do
    [ -d "$BUNDLES/$b-recal" ] || cp -r "$BUNDLES/$b" "$BUNDLES/$b-recal"
    respi-edge calibrate --bundle "$BUNDLES/$b-recal" --data "$CALIB" --json > "$WORK/reports/$b-recal.calibration.json"
    verify_one "$b-recal"
  done
fi

if has val; then  # the drift budget on the data it was planned on (all of it, not only the planner's 24 recordings)
  respi-edge verify --bundle "$BUNDLES/demo-4budget" --data "$CALIB" --bootstrap 1000 --json \
    --out "$WORK/verify-val/demo-4budget" > "$WORK/reports/demo-4budget-val.json"
  { echo "The drift-budget bundle (\`export --bits 4 --max-drift $BUDGET --calibration val.csv\`, planned on 24 of its"
    echo "recordings) on all of the demo's validation split: \`respi-edge verify --bundle demo-4budget --data val.csv"
    echo "--bootstrap 1000\` (bench/drift_test_intra.sh val). The budget bounds the mean |Δp|."
    echo; cat "$WORK/verify-val/demo-4budget/report.md"; } > bench/results/drift_budget_val.md
  cp "$WORK/reports/demo-4budget-val.json" bench/results/drift_budget_val.json
fi

if has table; then
  shopt -s nullglob
  reports=()
  for f in "$WORK"/reports/demo-{16-fp32,16-fp16,16-int8,16-int8-static,8,4,4fp4,onnx4,4budget}.json; do
    [ -f "$f" ] && reports+=("$f")
  done
  python -m respi_edge.bench.drift_table bench/results/drift_test_intra.json "${reports[@]}" \
    --out bench/results/drift_test_intra
  python -m respi_edge.bench.drift_table bench/results/drift_test_intra_recalibrated.json "$WORK"/reports/demo-*-recal.json \
    --out bench/results/drift_test_intra_recalibrated \
    --note "Each bundle's threshold re-calibrated after quantization (\`respi-edge calibrate --bundle B --data val.csv\`, Youden's J on the demo's validation split, 246 recordings of 30 patients, none fitted, no test_intra recording): the remedy when quantization shifts every probability."
fi
