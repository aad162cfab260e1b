//! Kernels specialised at run time: NVRTC compiles a source for this device's architecture,
//! and the CUBIN is kept in memory (per device) and on disk, keyed by a hash of the source, the
//! compile options, the architecture and the NVRTC version.
//!
//! The disk cache lives in `$FUSED_RNN_CACHE_DIR`, else `$XDG_CACHE_HOME/fused-rnn`, else
//! `~/.cache/fused-rnn`. A cache that cannot be read or written is skipped, never an error.

use super::CudaDevice;
use crate::error::{Error, Result};
use crate::nvrtc;
use cudarc::driver::CudaModule;
use cudarc::nvrtc::Ptx;
use std::path::PathBuf;
use std::sync::Arc;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a, 64 bits, continued from `h`: stable across builds, unlike std's hasher, so entries
/// on disk keep their names.
fn fnv1a_extend(mut h: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        h ^= byte as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// The hash of `parts`, each followed by a 0xff separator so that ("ab", "c") and ("a", "bc")
/// differ.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    parts.iter().fold(FNV_OFFSET, |h, part| {
        fnv1a_extend(fnv1a_extend(h, part), &[0xff])
    })
}

fn cache_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("FUSED_RNN_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("fused-rnn")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/fused-rnn")))
}

/// The disk-cache file of `source` (labelled `name`) compiled for `arch` (e.g. "sm_90") by
/// this NVRTC; None without a cache directory. `CudaDevice::jit_module` on a device of that
/// architecture reads it instead of compiling, so a cache can be filled ahead of time on a
/// machine without a GPU (scripts/gpu-bundle.sh).
pub fn cache_file(source: &str, name: &str, arch: &str) -> Result<Option<PathBuf>> {
    Ok(file_of(name, cache_key(source, arch)?))
}

/// A specialisation's key: the hash of its source, the compile options, the architecture and
/// the NVRTC version.
fn cache_key(source: &str, arch: &str) -> Result<u64> {
    let (version, _) = nvrtc::version()?;
    let options = nvrtc::compile::options(arch).join(" ");
    let version = format!("{}.{}", version.0, version.1);
    Ok(fnv1a(&[
        source.as_bytes(),
        options.as_bytes(),
        arch.as_bytes(),
        version.as_bytes(),
    ]))
}

fn file_of(name: &str, key: u64) -> Option<PathBuf> {
    cache_dir().map(|d| d.join(format!("{name}-{key:016x}.cubin")))
}

/// Where a specialisation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JitOrigin {
    Memory,
    Disk,
    Compiled,
}

/// A compiled specialisation: its module and the ptxas log of the compile (empty when it came
/// from a cache).
pub struct JitModule {
    pub module: Arc<CudaModule>,
    pub origin: JitOrigin,
    pub log: String,
}

impl CudaDevice {
    /// `source` compiled for this device (`name` labels errors and logs).
    pub fn jit_module(&self, source: &str, name: &str) -> Result<JitModule> {
        let (major, minor) = self.compute_capability();
        let arch = format!("sm_{major}{minor}");
        let key = cache_key(source, &arch)?;
        let mut jit = self.jit.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(module) = jit.get(&key) {
            return Ok(JitModule {
                module: module.clone(),
                origin: JitOrigin::Memory,
                log: String::new(),
            });
        }
        let file = file_of(name, key);
        let cached = file.as_ref().and_then(|f| std::fs::read(f).ok());
        let (image, origin, log) = match cached {
            Some(image) => (image, JitOrigin::Disk, String::new()),
            None => {
                let compiled = nvrtc::compile(source, &format!("{name}.cu"), &arch)
                    .map_err(|e| Error::Nvrtc(format!("{name}: {e}")))?;
                if let Some(file) = &file {
                    store(file, &compiled.image);
                }
                (compiled.image, JitOrigin::Compiled, compiled.log)
            }
        };
        let module = self.context().load_module(Ptx::from_binary(image))?;
        jit.insert(key, module.clone());
        Ok(JitModule {
            module,
            origin,
            log,
        })
    }
}

/// Writes `image` to `file` through a temporary name, so that a reader never sees half of it;
/// failures leave the cache without the entry.
fn store(file: &std::path::Path, image: &[u8]) {
    let Some(dir) = file.parent() else { return };
    let tmp = file.with_extension(format!("{}.tmp", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, image))
        .and_then(|_| std::fs::rename(&tmp, file));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_key_hash_separates_parts_and_is_stable() {
        assert_ne!(super::fnv1a(&[b"ab", b"c"]), super::fnv1a(&[b"a", b"bc"]));
        // The published FNV-1a test vector for "a".
        assert_eq!(
            super::fnv1a_extend(super::FNV_OFFSET, b"a"),
            0xaf63_dc4c_8601_ec8c
        );
    }
}
