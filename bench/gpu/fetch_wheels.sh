#!/usr/bin/env bash
# Wheels the GPU machine lacks (ENVIRONMENT.md §6: Python 3.12, torch 2.11 CUDA 13, transformers 5.17, no
# bitsandbytes, no soundfile/soxr guaranteed, no network), downloaded here into the git-ignored /.whl/ folder
# of the checkout and sent with `run(carry=[".whl"])`. bench/gpu/bootstrap.py installs on the GPU machine only
# those that are missing or older there.
#
#   bench/gpu/fetch_wheels.sh            # slim bitsandbytes (CUDA 13 + CPU kernels only, ~4 MiB)
#   bench/gpu/fetch_wheels.sh --full-bnb # the unmodified 41 MiB bitsandbytes wheel (total then ~63 MiB: too tight)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DEST="$ROOT/.whl"
PY="${PYTHON:-python3}"
mkdir -p "$DEST"
# The dev machine's versions of what the runtime needs (pyproject.toml pins transformers 5.25.0: prefix reuse
# passes `cache=`). transformers 5.25 needs huggingface_hub >= 2.4 (the GPU machine's transformers 5.17 pins
# hub < 2), and hub 2.4 pulls httpx2 & co: those come with their dependencies, resolved for Python 3.12.
# peft / accelerate / tokenizers are carried so an older copy there cannot break against hub 2.4.
NODEPS=(transformers==5.25.0 tokenizers==0.23.3 peft==0.21.2 accelerate==1.16.0 bitsandbytes==0.50.2
        soxr==1.1.0 soundfile==0.14.0 cffi==2.0.0 pycparser==2.23)
TAGS=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform any)
"$PY" -m pip download --no-deps "${TAGS[@]}" -d "$DEST" "${NODEPS[@]}"
"$PY" -m pip download "${TAGS[@]}" -d "$DEST" huggingface_hub==2.4.0
if [[ "${1:-}" != "--full-bnb" ]]; then
    "$PY" "$ROOT/bench/gpu/slim_wheel.py" "$DEST"/bitsandbytes-0.50.2-*.whl --keep 'libbitsandbytes_cpu' \
        --keep 'libbitsandbytes_cuda13'
fi
ls -la "$DEST"
du -cb "$DEST"/*.whl | tail -1
