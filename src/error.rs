//! The one error type of the crate. Every message names what failed (file, field) and what was
//! expected, so `main` can print it on one line and exit non-zero.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An OS-level failure on a path we were reading or writing.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A file exists but its contents do not match what we expected.
    #[error("{path}: field `{field}`: {expected}")]
    BadFile { path: PathBuf, field: String, expected: String },

    /// A user-supplied option or configuration value is invalid.
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },

    /// Numerical trouble during training (NaN/Inf), with the step it happened at.
    #[error("training stopped at step {step}: {why}")]
    Numerical { step: usize, why: String },

    /// The user interrupted training (Ctrl-C); the run was checkpointed and can be resumed.
    #[error("interrupted at step {step}; saved {}; continue with `ptrag-engine train --resume {}`", checkpoint.display(), run_dir.display())]
    Interrupted { step: usize, checkpoint: PathBuf, run_dir: PathBuf },

    /// A kernel failed (on the GPU, or the emulator found a missing barrier, a deadlock ...).
    #[error("kernel {kernel}: {why}")]
    Kernel { kernel: &'static str, why: String },

    /// No usable CUDA device: built without nvcc, no driver, no GPU, or a driver call failed.
    #[error("CUDA device: {0}")]
    Device(String),

    /// Shapes of tensors given to an operation do not fit together (a programming error caught early).
    #[error("shape mismatch in {op}: {why}")]
    Shape { op: &'static str, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn bad_file(path: impl AsRef<Path>, field: impl Into<String>, expected: impl Into<String>) -> Self {
        Error::BadFile { path: path.as_ref().to_path_buf(), field: field.into(), expected: expected.into() }
    }
    pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Invalid { what: what.into(), why: why.into() }
    }
}
