//! Exclusive access to a directory a process writes: an advisory lock (the OS's `flock`, released
//! when the process ends, however it ends) on a small file that names the holder's process id. A
//! second process gets a one-line error naming the directory and the holder instead of writing over
//! the first one's work.

use crate::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Held while a directory is being written; dropping it releases the lock (the file stays: removing
/// it would let a third process lock a new file while a second still waits on the old one).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

/// The lock file of `dir`, beside it (the directory itself may not exist yet): `.<name>.lock`.
pub fn lock_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().map_or("store".into(), |n| n.to_string_lossy().into_owned());
    dir.with_file_name(format!(".{name}.lock"))
}

impl DirLock {
    /// Locks `dir` for `what` (e.g. "prepare"), or fails at once, naming the process holding it.
    pub fn acquire(dir: &Path, what: &str) -> Result<DirLock> {
        let path = lock_path(dir);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
                return Err(Error::invalid(
                    what,
                    format!(
                        "{} is in use by {holder} (lock {}); wait for it to finish or choose another directory",
                        dir.display(),
                        path.display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let written = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id()));
        written.map_err(|e| Error::io(&path, e))?;
        Ok(DirLock { _file: file, path })
    }
}
