#!/usr/bin/env bash
# Builds (cargo check) a crate that depends on candle-core with CUDA and on this crate with the
# candle backend on CUDA, as a candle user would, on a machine without the CUDA toolkit:
# candle's CUDA build needs nvcc, which comes from pip here (into .cuda-nvcc/, ignored).
# Usage: bash scripts/check-beside-candle.sh   (about 10 minutes the first time)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
nvcc_dir="$root/.cuda-nvcc"
if [ ! -x "$nvcc_dir/nvidia/cu13/bin/nvcc" ] || [ ! -x "$nvcc_dir/nvidia/cu13/nvvm/bin/cicc" ]; then
    python3 -m pip install -q --no-deps --target "$nvcc_dir" nvidia-cuda-nvcc==13.0.88 \
        nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-crt==13.0.88 \
        nvidia-nvvm==13.0.88
fi
user="$root/target/beside-candle"
mkdir -p "$user/src"
cat > "$user/Cargo.toml" <<TOML
[package]
name = "beside-candle"
version = "0.1.0"
edition = "2021"

[dependencies]
candle-core = { version = "0.11.1", features = ["cuda"] }
candle-nn = { version = "0.11.1", features = ["cuda"] }
fused-rnn = { path = "$root", default-features = false, features = ["candle-cuda"] }

[workspace]
TOML
cat > "$user/src/main.rs" <<'RS'
use candle_nn::rnn::RNN;

fn main() -> candle_core::Result<()> {
    let device = candle_core::Device::cuda_if_available(0)?;
    let map = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&map, candle_core::DType::F32, &device);
    let lstm = fused_rnn::candle::lstm(8, 16, Default::default(), vb.pp("lstm"))?;
    let x = candle_core::Tensor::randn(0f32, 1.0, (2, 5, 8), &device)?;
    println!("{:?}", lstm.states_to_tensor(&lstm.seq(&x)?)?.dims());
    Ok(())
}
RS
export PATH="$nvcc_dir/nvidia/cu13/bin:$PATH" CUDA_ROOT="$nvcc_dir/nvidia/cu13" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
cd "$user" && cargo check
echo "fused-rnn (candle-cuda) and candle-core (cuda) build together"
