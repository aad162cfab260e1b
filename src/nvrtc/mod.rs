//! Runtime NVRTC: finding the library, its version, and compiling embedded kernel sources.

pub mod compile;
pub mod locate;

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Folders searched at run time: those of `locate::candidate_dirs`, then the folder NVRTC was
/// found in when the crate was built.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = locate::candidate_dirs(Some(Path::new(env!("CARGO_MANIFEST_DIR"))));
    if let Some(dir) = option_env!("FUSED_RNN_BUILD_NVRTC_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

/// Makes libnvrtc loadable once per process. Returns the folder it was loaded from (None: the
/// system library path); the error says where it looked.
pub fn ensure_loaded() -> Result<Option<PathBuf>> {
    static STATE: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let dirs = search_dirs();
            let found = locate::preload(&dirs);
            if found.is_some() || crate::device::libraries::present(crate::device::libraries::NVRTC)
            {
                Ok(found)
            } else {
                let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                Err(format!(
                    "{} not found (looked in {} and the system library path; set \
                     FUSED_RNN_NVRTC_DIR to the folder holding it)",
                    locate::NVRTC_LIB,
                    looked.join(", ")
                ))
            }
        })
        .clone()
        .map_err(Error::Nvrtc)
}

/// The NVRTC version and the folder it was loaded from, when the library can be loaded.
pub fn version() -> Result<((i32, i32), Option<PathBuf>)> {
    let dir = ensure_loaded()?;
    Ok((compile::version().map_err(Error::Nvrtc)?, dir))
}

/// Compiles one kernel source for `arch` (`sm_XY` gives CUBIN, `compute_XY` PTX).
pub fn compile(source: &str, name: &str, arch: &str) -> Result<compile::Compiled> {
    ensure_loaded()?;
    compile::compile(source, name, arch).map_err(Error::Nvrtc)
}
