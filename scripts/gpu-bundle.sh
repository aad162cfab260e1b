#!/usr/bin/env bash
# Builds (here, no GPU needed) the release test binaries, the bench binary and the CLI, strips
# them and copies them into target/gpu-bundle/bin for scripts/gpu-run.sh on a GPU machine, with
# the persistent kernels precompiled for an H100 in target/gpu-bundle/jit-cache.tar.gz.
# NVRTC is installed first so that every kernel is precompiled (CUBIN sm_90 + PTX).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-nvrtc.sh
bundle=target/gpu-bundle
rm -rf "$bundle"
mkdir -p "$bundle/bin"
cargo build --release --bin fused-rnn
cp target/release/fused-rnn "$bundle/bin/fused-rnn"
# Test and bench executables, named test-<target> and bench-<target>.
{
    cargo test --release --no-run --message-format=json
    cargo bench --no-run --message-format=json
} | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    kinds = msg["target"]["kind"]
    if not msg["profile"]["test"] and "bench" not in kinds:
        continue
    kind = "bench" if "bench" in kinds else "test"
    shutil.copy(msg["executable"], sys.argv[1] + "/bin/" + kind + "-" + msg["target"]["name"])
' "$bundle"
strip "$bundle"/bin/*
# The persistent kernel's specialisations for an H100 (every shape and variant the GPU runner
# uses), compiled here into a disk cache that gpu-run.sh unpacks: device time goes to running
# them, not to NVRTC.
cache=$(mktemp -d)
FUSED_RNN_REQUIRE_NVRTC=1 FUSED_RNN_FILL_CACHE=1 FUSED_RNN_CACHE_DIR="$cache" \
    cargo test --release --test kernels_compile every_persistent -- --quiet
tar czf "$bundle/jit-cache.tar.gz" -C "$cache" .
rm -rf "$cache"
ls -la "$bundle/bin"
du -sh "$bundle"
