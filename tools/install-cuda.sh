#!/usr/bin/env bash
# Installs the project's pinned CUDA 13.0 compiler (nvcc, ptxas, headers) from PyPI into .toolchain/cuda.
# Newer nvcc writes PTX that a CUDA 13.0 driver (580) rejects, so the versions are pinned together.
# Idempotent: does nothing when the pinned toolchain is already there. Prints the nvcc path last.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/.toolchain/cuda"
stamp="$dest/.pinned-13.0.88"
nvcc="$dest/nvidia/cu13/bin/nvcc"
if [ ! -f "$stamp" ] || [ ! -x "$nvcc" ]; then
  rm -rf "$dest"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 >&2
  touch "$stamp"
fi
echo "$nvcc"
