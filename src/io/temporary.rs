//! Output files written under a temporary name beside the target and renamed into place, and
//! the list of those in flight, so that a signal handler can remove them (`abandon_writes`).
//! One lock orders creating, renaming and abandoning: a signal handler that holds it while it
//! exits sees every write either complete or removed.

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Tells apart the temporary files of one process.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct Pending {
    paths: Vec<PathBuf>,
    /// Set by `abandon_writes`: nothing is created or renamed into place after it.
    abandoned: bool,
    /// Files renamed into place so far.
    completed: usize,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    paths: Vec::new(),
    abandoned: false,
    completed: 0,
});

fn pending() -> MutexGuard<'static, Pending> {
    // A panic elsewhere while holding the lock leaves the list itself consistent.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `abandon_writes` found. While it is held no write starts or completes: a signal
/// handler keeps it until the process exits.
pub struct Abandoned {
    _lock: MutexGuard<'static, Pending>,
    /// Temporary files removed.
    pub removed: usize,
    /// Outputs that had been renamed into place, complete, before the call.
    pub completed: usize,
}

/// Removes every temporary output file in flight and keeps any later write from being created
/// or completed: for a SIGINT/SIGTERM handler, which then exits holding the result.
pub fn abandon_writes() -> Abandoned {
    let mut pending = pending();
    pending.abandoned = true;
    let removed = pending
        .paths
        .drain(..)
        .filter(|p| std::fs::remove_file(p).is_ok())
        .count();
    Abandoned {
        completed: pending.completed,
        removed,
        _lock: pending,
    }
}

fn interrupted(target: &Path) -> Error {
    Error::Write {
        path: target.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::Interrupted),
    }
}

/// A file being written under a temporary name; removed when dropped unless persisted.
pub(crate) struct Temporary {
    path: PathBuf,
    file: File,
    /// Where it goes: the target, or the file a symbolic link there points to.
    target: PathBuf,
}

/// Where writing to `target` puts the file: through a symbolic link, and never over a
/// directory, a device or a pipe, which a rename would replace.
fn destination(target: &Path) -> Result<PathBuf> {
    let refuse = |why: &str| Error::Write {
        path: target.to_path_buf(),
        source: std::io::Error::other(why.to_string()),
    };
    // Links are followed (a dangling one to the file it names), as far as the kernel would.
    let mut resolved = target.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&resolved) {
            Ok(m) if m.file_type().is_symlink() => {
                let link = std::fs::read_link(&resolved).map_err(|source| Error::Write {
                    path: target.to_path_buf(),
                    source,
                })?;
                resolved = resolved.parent().unwrap_or(Path::new("")).join(link);
            }
            _ => break,
        }
    }
    let still_link = std::fs::symlink_metadata(&resolved).is_ok_and(|m| m.is_symlink());
    match std::fs::metadata(&resolved) {
        _ if still_link => Err(refuse("too many levels of symbolic links")),
        Ok(m) if !m.is_file() => Err(refuse("not a regular file")),
        _ if resolved.file_name().is_none() => Err(refuse("not a file name")),
        _ => Ok(resolved),
    }
}

impl Temporary {
    /// `.{name}.{pid}.{n}.tmp` beside `target` (or the file it links to), created empty.
    pub fn create(target: &Path) -> Result<Self> {
        let resolved = destination(target)?;
        let name = resolved.file_name().expect("checked by destination");
        // Registered under the lock that `abandon_writes` takes: a signal cannot fall between
        // creating the file and listing it.
        let mut pending = pending();
        if pending.abandoned {
            return Err(interrupted(target));
        }
        // A new file, never one that is there (a stale one, or a link planted under the name).
        let (path, file) = loop {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
            let path = resolved.with_file_name(tmp_name);
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(Error::Write {
                        path: target.to_path_buf(),
                        source,
                    })
                }
            }
        };
        pending.paths.push(path.clone());
        Ok(Temporary {
            path,
            file,
            target: resolved,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Renames the file into place (`target` names it in errors), unless the writes were
    /// abandoned.
    pub fn persist(self, target: &Path) -> Result<()> {
        let mut pending = pending();
        if pending.abandoned {
            return Err(interrupted(target));
        }
        std::fs::rename(&self.path, &self.target).map_err(|source| Error::Write {
            path: target.to_path_buf(),
            source,
        })?;
        pending.paths.retain(|p| p != &self.path);
        pending.completed += 1;
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        let mut pending = pending();
        if let Some(i) = pending.paths.iter().position(|p| p == &self.path) {
            pending.paths.swap_remove(i);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `path` through `write` into a temporary file beside it, synced, then renamed into
/// place: a reader never sees a half-written file, and an interrupt leaves none behind.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&File>) -> std::io::Result<()>,
) -> Result<()> {
    use std::io::Write;
    let tmp = Temporary::create(path)?;
    let failed = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut out = std::io::BufWriter::new(tmp.file());
    write(&mut out).and_then(|()| out.flush()).map_err(failed)?;
    drop(out);
    tmp.file().sync_all().map_err(failed)?;
    tmp.persist(path)
}
