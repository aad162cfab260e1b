//! The `fused-rnn` binary as a user runs it, and the safetensors files it reads: written
//! through the safetensors crate, or byte for byte (headers that lie).

use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary cargo built for this test, or FUSED_RNN_BIN (a bundled copy on another machine).
pub fn bin() -> Command {
    let path = std::env::var_os("FUSED_RNN_BIN").unwrap_or(env!("CARGO_BIN_EXE_fused-rnn").into());
    Command::new(path)
}

pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A well-formed safetensors file of `tensors`.
pub fn write(path: &Path, tensors: &[(&str, Vec<usize>, Data)]) {
    write_with_metadata(path, tensors, &[]);
}

/// A well-formed safetensors file of `tensors` with header metadata.
pub fn write_with_metadata(
    path: &Path,
    tensors: &[(&str, Vec<usize>, Data)],
    metadata: &[(&str, &str)],
) {
    let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let (dtype, bytes) = match data {
                Data::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            (name.to_string(), shape.clone(), dtype, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, d, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let metadata = (!metadata.is_empty()).then_some(metadata);
    safetensors::serialize_to_file(views, metadata, path).unwrap();
}

/// A file of the 8-byte header length `declared` (the header's true length when None), the
/// header text and `data`, whatever they say.
pub fn write_raw(path: &Path, declared: Option<u64>, header: &str, data: &[u8]) {
    let len = declared.unwrap_or(header.len() as u64);
    let bytes = [&len.to_le_bytes()[..], header.as_bytes(), data].concat();
    std::fs::write(path, bytes).unwrap();
}

/// `fused-rnn run --device cpu` on these files with `extra` flags.
pub fn run(weights: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["run", "--device", "cpu", "--weights"])
        .arg(weights)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .output()
        .unwrap()
}

/// Exit code 2, one line naming each of `mentions`, and no output file.
pub fn assert_fails(out: &Output, output: &Path, mentions: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected: {stderr}"
    );
    for m in mentions {
        assert!(stderr.contains(m), "`{m}` not in: {stderr}");
    }
    assert!(!output.exists(), "a failed run left {}", output.display());
}

/// `fused-rnn` under a shell's limits (`ulimit` arguments, e.g. "-v 2097152"): add its
/// arguments, then run it with `bounded`.
pub fn limited(limits: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit {limits} && exec \"$0\" \"$@\""))
        .arg(bin().get_program());
    command
}

/// Runs `command` to its end; Err, after killing it, when it takes longer than `limit`.
pub fn bounded(mut command: Command, limit: Duration) -> Result<Output, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            return Err(format!("still running after {limit:?}: {command:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(child.wait_with_output().unwrap())
}
