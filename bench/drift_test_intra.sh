#!/usr/bin/env bash
# The commands behind bench/results/drift_test_intra.{md,json}: export the demo model every way a user can,
# verify each bundle against the full-precision model on SPRSound test_intra, collect the reports.
#
#   bench/drift_test_intra.sh [STEP...]    steps: calib export verify recalibrate table (default: all)
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
STEPS=${*:-calib export verify recalibrate table}
mkdir -p "$BUNDLES" "$WORK/reports" "$WORK/verify"

has() { [[ " $STEPS " == *" $1 "* ]]; }

export_once() {  # NAME ARGS...: export unless the bundle is already there
  local name=$1; shift
  [ -f "$BUNDLES/$name/manifest.json" ] && return 0
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
  for v in fp32 fp16 int8 int8-static; do verify_one demo-16 "$v"; done
  verify_one demo-4budget
  for b in demo-8 demo-4 demo-4fp4 demo-onnx4; do verify_one "$b"; done
fi

if has recalibrate; then  # each quantized bundle's own threshold (Youden on the validation split), verified again
  for b in ${RECAL:-demo-8 demo-4 demo-4budget demo-onnx4}; do
    [ -d "$BUNDLES/$b-recal" ] || cp -r "$BUNDLES/$b" "$BUNDLES/$b-recal"
    respi-edge calibrate --bundle "$BUNDLES/$b-recal" --data "$CALIB" --json > "$WORK/reports/$b-recal.calibration.json"
    verify_one "$b-recal"
  done
fi

if has table; then
  python -m respi_edge.bench.drift_table "$WORK"/reports/demo-{16-fp32,16-fp16,16-int8,16-int8-static,8,4,4fp4,onnx4,4budget}.json \
    --out bench/results/drift_test_intra
  python -m respi_edge.bench.drift_table "$WORK"/reports/demo-*-recal.json --out bench/results/drift_test_intra_recalibrated \
    --note "Each bundle's threshold re-calibrated after quantization (\`respi-edge calibrate --bundle B --data val.csv\`, Youden's J on the demo's validation split, 246 recordings of 30 patients, none fitted, no test_intra recording): the remedy when quantization shifts every probability."
fi
