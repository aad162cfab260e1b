#!/usr/bin/env bash
# The main job on a fresh machine: installs NVRTC (so every kernel is precompiled), builds, and
# runs the captioning demo: the bundled captioner on the 1,000 test scenes of handwritten
# digits, on the GPU when there is one, else on the CPU (it says which). It prints captions
# beside their references and the scores, and writes results.json, references.json and
# report/index.html (each image, its caption, each word's attention).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-nvrtc.sh || echo "NVRTC not installed (pip failed): kernels compile at run time if the system has NVRTC"
cargo build --release --quiet
target/release/fused-rnn caption --report report "$@"
