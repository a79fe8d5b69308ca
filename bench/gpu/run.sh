#!/usr/bin/env bash
# The whole GPU run in one call (issue 16). On the lent GPU machine, from the repository root:
#     bash bench/gpu/run.sh                       # writes $OUT/gpu_results.{json,md} (+ bootstrap.json, log)
# Dry run on a CPU (tiny Llama shape, few iterations, same code):
#     bash bench/gpu/run.sh --device cpu --dry-run --out /tmp/gpu_dry
# Needs the wheels of bench/gpu/fetch_wheels.sh in .whl/ (carried with run(carry=[".whl"])); ../shared is not
# needed (the few golden files are in bench/gpu/golden/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PYTHON:-python3}"
# scratch (wheel site, shim, checkpoint, bundles) under the git-ignored out/: on an exec-able mount, unlike /tmp may be
WORK="${RESPI_GPU_WORK:-$ROOT/out/gpu-work}"
OUT_DIR="${OUT:-$ROOT/out/gpu}"
ARGS=()
while [[ $# -gt 0 ]]; do  # --out may override $OUT; everything else goes to the driver
    case "$1" in
        --out) OUT_DIR="$2"; shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
mkdir -p "$OUT_DIR" "$WORK/shim/respi_edge"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
# the package layout of pyproject.toml (respi_edge.runtime = runtime/, ...) without installing the project
ln -sfn "$ROOT/respi_edge/__init__.py" "$WORK/shim/respi_edge/__init__.py"
for p in runtime export calibration train bench configs; do ln -sfn "$ROOT/$p" "$WORK/shim/respi_edge/$p"; done
"$PY" "$ROOT/bench/gpu/bootstrap.py" "$ROOT/.whl" "$WORK/site" --report "$OUT_DIR/bootstrap.json"
export PYTHONPATH="$WORK/site:$WORK/shim${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
cd "$WORK"  # not the repository root: its respi_edge/ folder alone would shadow the shim
exec "$PY" -m respi_edge.bench.gpu.driver --out "$OUT_DIR" --repo "$ROOT" --work "$WORK" ${ARGS[@]+"${ARGS[@]}"}
