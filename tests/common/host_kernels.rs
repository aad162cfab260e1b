//! Kernels built for the host with a C++ compiler and tests/emulation/cuda_host.h, run by the
//! generic driver tests/emulation/launch_main.cpp: a test lays out its buffers, lists its
//! launches as the Rust launcher makes them, and reads the buffers back.

use fused_rnn::device::kernels::Kernel;
use fused_rnn::DType;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One kernel argument.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// Buffer `k` from its start.
    Buf(usize),
    /// Buffer `k` from a byte offset.
    BufAt(usize, usize),
    Null,
    I32(i32),
    F32(f32),
    U64(u64),
    F64(f64),
}

/// One launch of an entry point built by `HostKernels::build`.
pub struct Launch<'a> {
    pub entry: &'a str,
    pub grid: (u32, u32),
    pub threads: u32,
    pub shared: usize,
    pub args: Vec<Arg>,
}

pub struct HostKernels {
    exe: PathBuf,
    dir: PathBuf,
    entries: Vec<String>,
}

pub fn emulation_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emulation")
}

/// Runs the C++ compiler with the flags of every host build; panics with its messages.
pub fn compile(cxx: &str, what: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new(cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what}: the host build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl HostKernels {
    /// `entries` of kernels/`file`.cu built for the host, or None after printing why there is
    /// no C++ compiler (a failure under FUSED_RNN_REQUIRE_NVRTC=1).
    pub fn build(test: &str, file: &str, entries: &[&str]) -> Option<Self> {
        let cxx = super::cxx_or_skip(test)?;
        let dir = super::scratch(&format!("{test}-{file}"));
        let kernel = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("kernels/{file}.cu"));
        let list: String = entries.iter().map(|e| format!("X({e}) ")).collect();
        let source = format!(
            "#include \"{}\"\n#include \"{}\"\n#define ENTRIES {list}\n#include \"{}\"\n",
            emulation_dir().join("cuda_host.h").display(),
            kernel.display(),
            emulation_dir().join("launch_main.cpp").display(),
        );
        let (cpp, exe) = (dir.join(format!("{file}.cpp")), dir.join(file));
        std::fs::write(&cpp, source).unwrap();
        compile(
            &cxx,
            file,
            &["-o".as_ref(), exe.as_os_str(), cpp.as_os_str()],
        );
        Some(HostKernels {
            exe,
            dir,
            entries: entries.iter().map(|e| e.to_string()).collect(),
        })
    }

    /// Every dtype's entry point of `kernels` (of kernels/`file`.cu) built as `build` does.
    pub fn build_every_dtype(test: &str, file: &str, kernels: &[Kernel]) -> Option<Self> {
        let entries: Vec<String> = kernels
            .iter()
            .flat_map(|k| DType::ALL.iter().map(move |&d| k.entry_point(d)))
            .collect();
        let names: Vec<&str> = entries.iter().map(String::as_str).collect();
        HostKernels::build(test, file, &names)
    }

    /// Runs `launches` in order on `buffers` and returns the buffers afterwards; panics with the
    /// driver's message when a launch fails or a kernel wrote outside a buffer.
    pub fn run(&self, buffers: Vec<Vec<u8>>, launches: &[Launch]) -> Vec<Vec<u8>> {
        let mut input = Vec::new();
        input.extend((buffers.len() as u32).to_le_bytes());
        for b in &buffers {
            input.extend((b.len() as u64).to_le_bytes());
            input.extend(b);
        }
        input.extend((launches.len() as u32).to_le_bytes());
        for l in launches {
            let entry = self
                .entries
                .iter()
                .position(|e| e == l.entry)
                .unwrap_or_else(|| panic!("{} was not built", l.entry));
            let header = [entry as u32, l.grid.0, l.grid.1, l.threads, l.shared as u32];
            header.iter().for_each(|w| input.extend(w.to_le_bytes()));
            input.extend((l.args.len() as u32).to_le_bytes());
            for a in &l.args {
                match *a {
                    Arg::Buf(k) => arg_buffer(&mut input, k, 0),
                    Arg::BufAt(k, offset) => arg_buffer(&mut input, k, offset),
                    Arg::Null => input.push(5),
                    Arg::I32(v) => tagged(&mut input, 1, &v.to_le_bytes()),
                    Arg::F32(v) => tagged(&mut input, 2, &v.to_le_bytes()),
                    Arg::U64(v) => tagged(&mut input, 3, &v.to_le_bytes()),
                    Arg::F64(v) => tagged(&mut input, 4, &v.to_le_bytes()),
                }
            }
        }
        let (in_file, out_file) = (self.dir.join("launches.in"), self.dir.join("launches.out"));
        std::fs::write(&in_file, input).unwrap();
        let run = Command::new(&self.exe)
            .arg(&in_file)
            .arg(&out_file)
            .output()
            .unwrap();
        let names: Vec<&str> = launches.iter().map(|l| l.entry).collect();
        assert!(
            run.status.success(),
            "{names:?} on the host: {}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        let bytes = std::fs::read(&out_file).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            out.push(bytes[at + 8..at + 8 + len].to_vec());
            at += 8 + len;
        }
        assert_eq!(out.len(), buffers.len());
        out
    }
}

impl Drop for HostKernels {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tagged(input: &mut Vec<u8>, tag: u8, value: &[u8]) {
    input.push(tag);
    input.extend(value);
}

fn arg_buffer(input: &mut Vec<u8>, k: usize, offset: usize) {
    input.push(0);
    input.extend((k as u32).to_le_bytes());
    input.extend((offset as u64).to_le_bytes());
}

/// `values` stored in `dtype` (rounded to nearest even), as the kernels read them.
pub fn bytes(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// The values of a buffer of `dtype`.
pub fn values(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|w| f32::from_le_bytes(w.try_into().unwrap()))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|w| half::f16::from_le_bytes(w.try_into().unwrap()).to_f32())
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|w| half::bf16::from_le_bytes(w.try_into().unwrap()).to_f32())
            .collect(),
    }
}

pub fn bytes_i32(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn ints(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|w| i32::from_le_bytes(w.try_into().unwrap()))
        .collect()
}

/// `n` bytes of 0xFF: NaN in every float dtype, so an element a kernel leaves unwritten fails
/// any comparison.
pub fn poisoned(n: usize) -> Vec<u8> {
    vec![0xff; n]
}
