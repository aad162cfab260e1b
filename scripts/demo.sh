#!/usr/bin/env bash
# The main job on a fresh machine: installs NVRTC (so every kernel is precompiled), builds, and
# runs a small forward pass on the GPU when there is one, else on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-nvrtc.sh || echo "NVRTC not installed (pip failed): kernels compile at run time if the system has NVRTC"
cargo run --release --quiet -- demo
