//! Finding libnvrtc on machines without a CUDA toolkit.
//!
//! cudarc looks NVRTC up by library name, never by path. We load `libnvrtc-builtins` and then
//! `libnvrtc` by absolute path with `RTLD_GLOBAL` first, so that cudarc's `dlopen("libnvrtc.so.13")`
//! (and NVRTC's own `dlopen` of its builtins) find the copies we chose. cudarc tries the
//! unversioned `libnvrtc.so` before that name, though: where one is on the library path (a CUDA
//! toolkit), it wins. This file is shared with build.rs, so it depends on std and libloading
//! alone.

use std::path::{Path, PathBuf};

pub const NVRTC_LIB: &str = "libnvrtc.so.13";
pub const BUILTINS_LIB: &str = "libnvrtc-builtins.so.13.0";

/// Folders that may hold `libnvrtc.so.13`, most specific first: `FUSED_RNN_NVRTC_DIR`, the CUDA
/// toolkit named by `CUDA_HOME`/`CUDA_PATH`, the pip layout under `<root>/.cuda`, the default
/// toolkit path.
pub fn candidate_dirs(repo_root: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("FUSED_RNN_NVRTC_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var) {
            dirs.push(Path::new(&home).join("lib64"));
            dirs.push(Path::new(&home).join("lib"));
        }
    }
    if let Some(root) = repo_root {
        dirs.push(root.join(".cuda/nvidia/cu13/lib"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs
}

/// Loads NVRTC from the first folder that holds it and keeps it loaded for the life of the
/// process. Returns the folder, or `None` when no candidate folder holds it (the system search
/// path may still find one).
pub fn preload(dirs: &[PathBuf]) -> Option<PathBuf> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    for dir in dirs {
        let nvrtc = dir.join(NVRTC_LIB);
        if !nvrtc.is_file() {
            continue;
        }
        let builtins = dir.join(BUILTINS_LIB);
        // SAFETY: these are NVIDIA's shared libraries; their initialisers have no preconditions.
        // The handles are leaked on purpose: the libraries stay loaded for the process.
        unsafe {
            if builtins.is_file() {
                if let Ok(lib) = Library::open(Some(&builtins), RTLD_NOW | RTLD_GLOBAL) {
                    std::mem::forget(lib);
                }
            }
            if let Ok(lib) = Library::open(Some(&nvrtc), RTLD_NOW | RTLD_GLOBAL) {
                std::mem::forget(lib);
                return Some(dir.clone());
            }
        }
    }
    None
}
