//! What this machine has, read where work is sized against it: its memory.

use crate::{Error, Result};

/// Refuses work that needs more than this machine's memory, naming what was asked (`what`) and
/// both figures. Where the machine's memory cannot be read, nothing is refused.
pub fn check_fits(bytes: f64, what: impl FnOnce() -> String) -> Result<()> {
    match machine_bytes() {
        Some(total) if bytes > total => Err(Error::invalid(
            what(),
            format!("needs at least {:.1} GB of memory, and this machine has {:.1} GB", bytes / 1e9, total / 1e9),
        )),
        _ => Ok(()),
    }
}

/// This machine's memory (`MemTotal` of /proc/meminfo), on Linux.
fn machine_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}
