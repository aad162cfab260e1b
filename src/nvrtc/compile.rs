//! One NVRTC compilation: CUDA C++ source → PTX or CUBIN, with the compiler and ptxas log.
//!
//! cudarc's safe `compile_ptx_with_opts` returns neither CUBIN nor the log on success, so this
//! goes through `nvrtc::result` and `nvrtc::sys`. Shared with build.rs (std and cudarc only).

use cudarc::nvrtc::{result, sys};
use std::ffi::{c_char, CString};

/// What ptxas reported for one kernel entry point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionStats {
    pub name: String,
    pub registers: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

/// A compiled image and NVRTC's log (with `-v` ptxas output when the target is an `sm_` arch).
pub struct Compiled {
    pub image: Vec<u8>,
    pub log: String,
}

/// Options every kernel is compiled with. `arch` is `compute_XY` (PTX) or `sm_XY` (CUBIN).
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "--ptxas-options=-v".into(),
        "-default-device".into(),
    ]
}

/// Compiles `source` for `arch`. A compile error returns the log verbatim.
pub fn compile(source: &str, name: &str, arch: &str) -> Result<Compiled, String> {
    let src = CString::new(source).map_err(|_| format!("{name}: source contains a NUL byte"))?;
    let cname = CString::new(name).map_err(|_| format!("{name}: name contains a NUL byte"))?;
    let prog = result::create_program(&src, Some(&cname)).map_err(|e| format!("{name}: {e:?}"))?;
    // SAFETY: `prog` is a live program from create_program, used only before it is destroyed
    // (once, last); `cubin`'s contract holds: it runs only after compile_program succeeded for
    // an `sm_` arch.
    unsafe {
        let compiled = result::compile_program(prog, &options(arch));
        let log = match result::get_program_log(prog) {
            Ok(raw) => c_chars_to_string(&raw),
            Err(e) => format!("(nvrtcGetProgramLog failed: {e:?})"),
        };
        let image = match compiled {
            Err(e) => Err(format!("{name} ({arch}): {e:?}\n{log}")),
            Ok(()) if arch.starts_with("sm_") => cubin(prog),
            Ok(()) => result::get_ptx(prog)
                .map(|raw| c_chars_to_string(&raw).into_bytes())
                .map_err(|e| format!("{name}: nvrtcGetPTX: {e:?}")),
        };
        let _ = result::destroy_program(prog);
        image.map(|image| Compiled { image, log })
    }
}

/// # Safety
/// `prog` must be a successfully compiled program for an `sm_` target.
unsafe fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: `prog` is a live, compiled program (the caller's contract); `size` is valid for
    // one write.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
    let mut buf = vec![0u8; size];
    // SAFETY: `prog` as above; `buf` holds the `size` bytes NVRTC just reported for this
    // program's CUBIN, which is all it writes.
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
    Ok(buf)
}

fn c_chars_to_string(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The NVRTC version as (major, minor).
pub fn version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: both pointers are valid for writes of one c_int.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("nvrtcVersion: {e:?}"))?;
    Ok((major, minor))
}

/// Reads per-function registers, stack and spills from ptxas `-v` output.
pub fn parse_ptxas_log(log: &str) -> Vec<FunctionStats> {
    let mut out: Vec<FunctionStats> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(FunctionStats {
                name,
                registers: 0,
                stack_bytes: 0,
                spill_store_bytes: 0,
                spill_load_bytes: 0,
            });
            continue;
        }
        let Some(current) = out.last_mut() else {
            continue;
        };
        if line.contains("bytes stack frame") {
            let nums = numbers(line);
            if let [stack, stores, loads, ..] = nums[..] {
                current.stack_bytes = stack;
                current.spill_store_bytes = stores;
                current.spill_load_bytes = loads;
            }
        } else if let Some(rest) = line.split("Used ").nth(1) {
            if rest.contains("registers") {
                current.registers = numbers(rest).first().copied().unwrap_or(0);
            }
        }
    }
    out
}

fn numbers(text: &str) -> Vec<u32> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_log_gives_registers_and_spills_per_function() {
        let log = "ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'a_f32' for 'sm_90'
ptxas info    : Function properties for a_f32
ptxas         .     8 bytes stack frame, 12 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers, 380 bytes cmem[0]
ptxas info    : Compiling entry function 'b_f16' for 'sm_90'
ptxas info    : Function properties for b_f16
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 17 registers, used 1 barriers
";
        let stats = parse_ptxas_log(log);
        assert_eq!(
            stats,
            vec![
                FunctionStats {
                    name: "a_f32".into(),
                    registers: 40,
                    stack_bytes: 8,
                    spill_store_bytes: 12,
                    spill_load_bytes: 4
                },
                FunctionStats {
                    name: "b_f16".into(),
                    registers: 17,
                    stack_bytes: 0,
                    spill_store_bytes: 0,
                    spill_load_bytes: 0
                },
            ]
        );
    }
}
