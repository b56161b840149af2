//! Data: the memory-mapped dataset store, the built-in synthetic benchmark, split files and the
//! set sampler of the cross-cell-type few-shot protocol.

pub mod genept;
pub mod h5ad;
pub mod hvg;
pub mod inspect;
pub mod lock;
pub mod prepare;
pub mod responses;
pub mod sampler;
pub mod split;
pub mod store;
pub mod synth;
pub mod truth;

/// Write `bytes` to `path` atomically: a temporary sibling first, then a rename, so a reader never
/// sees a half-written file and a failed or interrupted write leaves the old file in place (a
/// failed one also removes its temporary).
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> crate::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    let mut f = std::fs::File::create(&tmp).map_err(|e| crate::Error::io(&tmp, e))?;
    let written = f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| crate::Error::io(&tmp, e));
    let renamed = written.and_then(|_| std::fs::rename(&tmp, path).map_err(|e| crate::Error::io(path, e)));
    if renamed.is_err() {
        // a full disk, say: leave nothing half-written behind
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}
