//! Every embedded kernel compiles with runtime NVRTC, to CUBIN sm_90 and PTX compute_80, with
//! no register spills. Skips with a printed reason without NVRTC (fails instead under
//! FUSED_RNN_REQUIRE_NVRTC=1).

mod common;

use fused_rnn::device::kernels::{ENTRIES, KERNELS};
use fused_rnn::nvrtc::{self, compile::parse_ptxas_log};
use fused_rnn::DType;

#[test]
fn every_kernel_compiles_without_spills() {
    if !common::nvrtc_or_skip("every_kernel_compiles_without_spills") {
        return;
    }
    assert!(!KERNELS.is_empty());
    for image in KERNELS {
        let file = format!("{}.cu", image.name);
        nvrtc::compile(image.source, &file, "compute_80").unwrap_or_else(|e| panic!("{e}"));
        let cubin = nvrtc::compile(image.source, &file, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        let stats = parse_ptxas_log(&cubin.log);
        let (version, dir) = nvrtc::version().unwrap();
        assert!(
            !stats.is_empty(),
            "{file}: NVRTC {version:?} from {dir:?} gave no ptxas statistics; log:\n{}",
            cubin.log
        );
        for s in &stats {
            println!(
                "{file}: {:<28} {:>3} registers, {} B spill stores, {} B spill loads",
                s.name, s.registers, s.spill_store_bytes, s.spill_load_bytes
            );
            assert_eq!(
                s.spill_store_bytes + s.spill_load_bytes,
                0,
                "{file}: {} spills",
                s.name
            );
        }
    }
}

#[test]
fn the_typed_kernel_ids_are_exactly_the_compiled_entry_points() {
    // Uses the ptxas statistics build.rs recorded, so it needs NVRTC at build time only.
    if KERNELS.iter().any(|k| k.functions.is_empty()) {
        let why = "the crate was built without NVRTC, so there are no precompiled entry points";
        if std::env::var("FUSED_RNN_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("{why}");
        }
        eprintln!("skipping the_typed_kernel_ids_are_exactly_the_compiled_entry_points: {why}");
        return;
    }
    for image in KERNELS {
        let mut compiled: Vec<&str> = image.functions.iter().map(|f| f.name).collect();
        let mut ids: Vec<String> = ENTRIES
            .iter()
            .filter(|k| k.file == image.name)
            .flat_map(|k| k.dtypes.iter().map(|&d| k.entry_point(d)))
            .collect();
        compiled.sort();
        ids.sort();
        assert_eq!(
            compiled, ids,
            "{}.cu: ids and compiled entry points",
            image.name
        );
    }
    // The stamped ones carry every dtype, the hand-written ones theirs.
    use fused_rnn::device::kernels::ids;
    assert_eq!(ids::elementwise::LOAD_NAIVE.dtypes, DType::ALL);
    assert_eq!(ids::train::CROSS_ENTROPY_MEAN.dtypes, [DType::F32]);
}

/// The shapes `benches/recurrent.rs` times persistently (cell, hidden, batch), besides the
/// tests' `common::PERSISTENT_SHAPES`.
const PERSISTENT_BENCH_SHAPES: &[(fused_rnn::Cell, usize, usize)] = &[
    (fused_rnn::Cell::Lstm, 768, 16),
    (fused_rnn::Cell::Lstm, 1024, 1),
    (fused_rnn::Cell::Gru, 512, 8),
    (fused_rnn::Cell::Rnn(fused_rnn::Nonlinearity::Tanh), 1024, 4),
];

/// The variants of the persistent kernel compiled for every dtype (see `Spec::with_variant`):
/// the default (W_hh in shared memory), and those scripts/gpu-run.sh tests: W_hh in registers,
/// with h staged by 16-byte loads and the input side prefetched, alone and with registers, also
/// mostly in shared memory past a small register budget.
const VARIANTS: [&str; 5] = [
    "smem",
    "regs",
    "vec,prefetch",
    "regs,vec,prefetch",
    "regs=48,vec,prefetch",
];

/// With FUSED_RNN_FILL_CACHE=1 each image is also kept where `CudaDevice::jit_module` on an
/// H100 looks for it (`device::cache_file`, under FUSED_RNN_CACHE_DIR): scripts/gpu-bundle.sh
/// carries that cache to the GPU machine, which then compiles none of them.
#[test]
fn every_persistent_specialisation_the_tests_use_compiles_without_spills() {
    use fused_rnn::ops::recurrent::persistent::Spec;
    use fused_rnn::DType;
    if !common::nvrtc_or_skip(
        "every_persistent_specialisation_the_tests_use_compiles_without_spills",
    ) {
        return;
    }
    let fill_cache = std::env::var("FUSED_RNN_FILL_CACHE").is_ok_and(|v| v == "1");
    let shapes = common::PERSISTENT_SHAPES
        .iter()
        .chain(PERSISTENT_BENCH_SHAPES);
    for &(cell, hidden, batch) in shapes {
        // Each dtype's default in the variants FUSED_RNN_PERSISTENT names (see
        // `Spec::with_variant`; scripts/gpu-run.sh tests them), and CUDA-core FMAs in bf16.
        let variants = DType::ALL
            .into_iter()
            .flat_map(|dtype| VARIANTS.map(|v| (dtype, v)))
            .chain(["fma", "fma,regs"].map(|v| (DType::BF16, v)));
        for (dtype, variant) in variants {
            let spec = Spec::new(cell, hidden, batch, dtype, common::H100_SMS)
                .with_variant(variant)
                .unwrap();
            let (name, source) = (spec.name(), spec.source());
            // The source checks the host's shared-memory size against its layout.
            let cubin = nvrtc::compile(&source, &format!("{name}.cu"), "sm_90")
                .unwrap_or_else(|e| panic!("{e}"));
            let stats = parse_ptxas_log(&cubin.log);
            assert_eq!(stats.len(), 1, "{name}: log:\n{}", cubin.log);
            let s = &stats[0];
            println!(
                "{name}: {} registers, {} B stack, {} B spill stores, {} B spill loads, {} B shared",
                s.registers,
                s.stack_bytes,
                s.spill_store_bytes,
                s.spill_load_bytes,
                spec.shared_bytes()
            );
            assert_eq!(s.spill_store_bytes + s.spill_load_bytes, 0, "{name} spills");
            // A stack frame would mean the register-held weights were indexed at run time.
            assert_eq!(s.stack_bytes, 0, "{name} has a stack frame");
            // An H100 lets a block opt into 227 KiB of shared memory.
            assert!(
                spec.shared_bytes() <= 227 * 1024,
                "{name} does not fit an H100"
            );
            if fill_cache {
                let file = fused_rnn::device::cache_file(&source, &name, "sm_90")
                    .unwrap()
                    .expect("FUSED_RNN_FILL_CACHE needs a cache directory");
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, &cubin.image).unwrap();
            }
        }
    }
}
