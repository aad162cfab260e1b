//! Running one isolated call in a child process of this test binary, and reading its end: a
//! panic, a death (with the allocation refused), a hang, or success.

use crate::budget::ALLOC_MARK;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that makes `isolated_call` run one of `isolated_calls`.
pub(crate) const CASE_VAR: &str = "FUSED_RNN_SHAPES_CASE";
/// How a child marks a panic on its standard output.
pub(crate) const PANIC_MARK: &str = "library_shapes panic: ";
const CHILD_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs `isolated_calls()[index]` in a child process (this binary's `isolated_call` test);
/// Err describes its panic, its death (with the allocation past the budget, if any) or its
/// hang.
pub(crate) fn run_isolated(index: usize) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "isolated_call",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE_VAR, index.to_string())
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start a child: {e}"))?;
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => {
                child.kill().ok();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let panics: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once(PANIC_MARK).map(|(_, panic)| panic))
        .collect();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let refused = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(ALLOC_MARK))
        .map_or(String::new(), |a| format!("; the allocation refused: {a}"));
    // Its last word: the allocation failure, else the last line but a note.
    let last = stderr
        .lines()
        .find(|l| l.starts_with("memory allocation of"))
        .or_else(|| {
            let note = |l: &str| l.trim().is_empty() || l.starts_with("note:");
            stderr
                .lines()
                .rfind(|l| !note(l) && !l.starts_with(ALLOC_MARK))
        })
        .unwrap_or("");
    match status {
        _ if !panics.is_empty() => Err(panics.join("; ")),
        None => Err(format!("no answer within {CHILD_TIMEOUT:?}{refused}")),
        Some(s) if !s.success() => Err(format!("the process died ({s}): `{last}`{refused}")),
        Some(_) => Ok(()),
    }
}
