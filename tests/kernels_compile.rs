//! Every embedded kernel compiles with runtime NVRTC, to CUBIN sm_90 and PTX compute_80, with
//! no register spills. Skips with a printed reason without NVRTC (fails instead under
//! FUSED_RNN_REQUIRE_NVRTC=1).

mod common;

use fused_rnn::device::kernels::KERNELS;
use fused_rnn::nvrtc::{self, compile::parse_ptxas_log};

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
fn every_entry_point_is_stamped_for_every_dtype() {
    // Uses the ptxas statistics build.rs recorded, so it needs NVRTC at build time only.
    if KERNELS.iter().any(|k| k.functions.is_empty()) {
        let why = "the crate was built without NVRTC, so there are no precompiled entry points";
        if std::env::var("FUSED_RNN_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            panic!("{why}");
        }
        eprintln!("skipping every_entry_point_is_stamped_for_every_dtype: {why}");
        return;
    }
    for (file, op, dtypes) in common::ENTRY_POINTS {
        let image = KERNELS
            .iter()
            .find(|k| k.name == *file)
            .expect("kernel file");
        for &dtype in *dtypes {
            let entry = fused_rnn::device::kernels::entry_point(op, dtype);
            assert!(
                image.functions.iter().any(|f| f.name == entry),
                "{file}.cu: missing entry point {entry}"
            );
        }
    }
}

#[test]
fn every_persistent_specialisation_the_tests_use_compiles_without_spills() {
    use fused_rnn::ops::recurrent::persistent::Spec;
    if !common::nvrtc_or_skip(
        "every_persistent_specialisation_the_tests_use_compiles_without_spills",
    ) {
        return;
    }
    for &(cell, hidden, batch) in common::PERSISTENT_SHAPES {
        // Each dtype's default, and CUDA-core FMAs in bf16 (FUSED_RNN_PERSISTENT=fma).
        let variants = fused_rnn::DType::ALL
            .map(|dtype| (dtype, dtype != fused_rnn::DType::F32))
            .into_iter()
            .chain([(fused_rnn::DType::BF16, false)]);
        for (dtype, tensor_cores) in variants {
            let mut spec = Spec::new(cell, hidden, batch, dtype, common::H100_SMS);
            spec.tensor_cores = tensor_cores;
            let name = spec.name();
            let cubin = nvrtc::compile(&spec.source(), &format!("{name}.cu"), "sm_90")
                .unwrap_or_else(|e| panic!("{e}"));
            let stats = parse_ptxas_log(&cubin.log);
            assert_eq!(stats.len(), 1, "{name}: log:\n{}", cubin.log);
            let s = &stats[0];
            println!(
                "{name}: {} registers, {} B spill stores, {} B spill loads, {} B shared",
                s.registers,
                s.spill_store_bytes,
                s.spill_load_bytes,
                spec.shared_bytes()
            );
            assert_eq!(s.spill_store_bytes + s.spill_load_bytes, 0, "{name} spills");
            // An H100 lets a block opt into 227 KiB of shared memory.
            assert!(
                spec.shared_bytes() <= 227 * 1024,
                "{name} does not fit an H100"
            );
        }
    }
}
