#!/usr/bin/env bash
# Installs NVRTC 13.0 (no GPU or CUDA toolkit needed) into .cuda/ beside the repo, where
# build.rs and the runtime look for it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .cuda/nvidia/cu13/lib/libnvrtc.so.13 ]; then
    exit 0
fi
python3 -m pip install -q --disable-pip-version-check --no-deps --target .cuda \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85
