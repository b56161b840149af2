//! Outputs that belong together (`pred.h5ad` with `real.h5ad`, a report's files) arrive whole:
//! they are written into a partial directory of this process's own inside the output directory,
//! under that directory's lock (`data::lock`), and renamed into place together once every one of
//! them is written. A failed or interrupted writer leaves the older outputs as they were; its
//! partial directory, marked as the engine's, is removed by the next writer of the same directory,
//! and nothing else there is ever touched.

use super::lock::DirLock;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The file that marks a directory as the engine's own partial output (a store being written, or
/// an output set), so that only such directories are ever removed.
pub(crate) const PARTIAL_MARK: &str = ".ptrag-partial";

/// Removes the directories in `dir` whose names start with `prefix` and that hold the engine's
/// mark: what killed writers left. Called under the lock of what they were writing, so no live
/// writer owns one; nothing unmarked is touched.
pub(crate) fn remove_marked(dir: &Path, prefix: &str) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(prefix) && path.join(PARTIAL_MARK).is_file() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Files being written for `out`; `commit` puts them in place.
pub struct OutputSet {
    out: PathBuf,
    partial: PathBuf,
    _lock: DirLock,
    /// `out` did not exist before: an uncommitted set removes it again if it is empty.
    created: bool,
    committed: bool,
}

impl OutputSet {
    /// Locks `out` (`what` names it in the error a second process gets), creates it, removes a
    /// killed writer's partial directory and starts this process's own.
    pub fn begin(out: &Path, what: &str) -> Result<OutputSet> {
        let lock = DirLock::acquire(out, what)?;
        let created = !out.exists();
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        remove_marked(out, ".partial-")?;
        let partial = out.join(format!(".partial-{}", std::process::id()));
        std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        std::fs::write(partial.join(PARTIAL_MARK), b"").map_err(|e| Error::io(partial.join(PARTIAL_MARK), e))?;
        Ok(OutputSet { out: out.to_path_buf(), partial, _lock: lock, created, committed: false })
    }

    /// Where to write the output `name` until `commit`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.partial.join(name)
    }

    /// Where `name` will be once committed.
    pub fn final_path(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }

    /// Renames every file written into place, replacing older files of the same names, and removes
    /// the partial directory. The renames follow one another within one directory once every file
    /// is complete, so only a failure between two of them (not a full disk, not a failed write)
    /// could leave a mix of old and new.
    pub fn commit(mut self) -> Result<()> {
        // Tests stand in a failure after the outputs were written (a full disk, a kill) with this.
        if std::env::var_os("PTRAG_FAULT_BEFORE_COMMIT").is_some() {
            return Err(Error::invalid("PTRAG_FAULT_BEFORE_COMMIT", format!("set: {} left as it was", self.out.display())));
        }
        let entries = std::fs::read_dir(&self.partial).map_err(|e| Error::io(&self.partial, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.partial, e))?;
            let name = entry.file_name();
            if name != PARTIAL_MARK {
                let to = self.out.join(&name);
                std::fs::rename(entry.path(), &to).map_err(|e| Error::io(&to, e))?;
            }
        }
        std::fs::remove_dir_all(&self.partial).map_err(|e| Error::io(&self.partial, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for OutputSet {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.partial);
            if self.created {
                let _ = std::fs::remove_dir(&self.out); // only if empty
            }
        }
    }
}
