//! Whether a CUDA library can be opened, asked before cudarc first touches it.
//!
//! cudarc loads its libraries lazily and panics when one is missing, and it offers
//! `is_culib_present` only when it loads them itself (`dynamic-loading`). Whether it does is
//! decided by the whole dependency graph: beside candle, which turns on `dynamic-linking`, the
//! libraries are linked instead and that function does not exist. So the probe is ours and
//! asks for the names cudarc's loader tries; when cudarc links them, a process that starts at
//! all has them, and the probe finds them already loaded.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};

/// The CUDA driver library.
pub(crate) const DRIVER: &[&str] = &["cuda", "nvcuda"];
pub(crate) const CUBLAS: &[&str] = &["cublas"];
pub(crate) const CUBLAS_LT: &[&str] = &["cublasLt"];
pub(crate) const NVRTC: &[&str] = &["nvrtc"];

/// The file names cudarc's loader tries for `name` (any CUDA major version it knows).
fn candidates(name: &str) -> impl Iterator<Item = String> + '_ {
    let bits = usize::BITS;
    let plain = [
        format!("{DLL_PREFIX}{name}{DLL_SUFFIX}"),
        format!("{DLL_PREFIX}{name}{bits}{DLL_SUFFIX}"),
    ];
    let versioned = ["13", "12", "11", "10", "9", "1"]
        .into_iter()
        .flat_map(move |v| {
            [
                format!("{DLL_PREFIX}{name}{DLL_SUFFIX}.{v}"),
                format!("{DLL_PREFIX}{name}{bits}_{v}{DLL_SUFFIX}"),
                format!("{DLL_PREFIX}{name}{bits}_{v}0_0{DLL_SUFFIX}"),
            ]
        });
    plain.into_iter().chain(versioned)
}

/// True when one of `names` (see the constants) can be opened.
pub(crate) fn present(names: &[&str]) -> bool {
    names.iter().flat_map(|n| candidates(n)).any(|file| {
        // SAFETY: opening a CUDA library runs only its initialisers, which have no
        // preconditions; the handle is closed again at once.
        unsafe { libloading::Library::new(file) }.is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_the_names_cudarc_tries_on_linux() {
        let names: Vec<String> = candidates("cublas").collect();
        for want in [
            "libcublas.so",
            "libcublas.so.13",
            "libcublas.so.12",
            "libcublas.so.1",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }

    #[test]
    fn an_absent_library_is_absent() {
        assert!(!present(&["fused_rnn_no_such_library"]));
    }
}
