//! Data: the memory-mapped dataset store, the built-in synthetic benchmark, split files and the
//! set sampler of the cross-cell-type few-shot protocol.

pub mod genept;
pub mod h5ad;
pub mod hvg;
pub mod inspect;
pub mod lock;
pub mod output;
pub mod prepare;
pub mod responses;
pub mod sampler;
pub mod split;
pub mod store;
pub mod synth;
pub mod truth;

/// The stand-in for a full disk that tests use: with `PTRAG_FAULT_DISK_FULL_AFTER=N` in the
/// environment, every write through the engine's writers (`write_atomic`, a store's files) fails
/// as a full disk does (ENOSPC, naming the file) once this process has written N bytes. Unset, it
/// is one atomic add per write.
pub(crate) fn charge_disk(path: &std::path::Path, bytes: usize) -> crate::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static WRITTEN: AtomicU64 = AtomicU64::new(0);
    let limit = LIMIT.get_or_init(|| std::env::var("PTRAG_FAULT_DISK_FULL_AFTER").ok().and_then(|v| v.parse().ok()));
    let written = WRITTEN.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
    match limit {
        Some(limit) if written > *limit => Err(crate::Error::io(path, std::io::Error::from_raw_os_error(28))), // ENOSPC
        _ => Ok(()),
    }
}

/// Write `bytes` to `path` atomically: a temporary sibling first, then a rename, so a reader never
/// sees a half-written file and a failed or interrupted write leaves the old file in place (a
/// failed one also removes its temporary).
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> crate::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    let mut f = std::fs::File::create(&tmp).map_err(|e| crate::Error::io(&tmp, e))?;
    let written =
        charge_disk(&tmp, bytes.len()).and_then(|_| f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| crate::Error::io(&tmp, e)));
    let renamed = written.and_then(|_| std::fs::rename(&tmp, path).map_err(|e| crate::Error::io(path, e)));
    if renamed.is_err() {
        // a full disk, say: leave nothing half-written behind
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

/// A label (a cell type, a model variant) as one safe path component: ASCII letters lowercased
/// (as fold directories have always been named), letters, digits, `-`, `_` and inner dots kept,
/// every other byte of its UTF-8 written `%XX`, so no label can name a path outside the directory
/// it is joined to (`/`, `..`, a leading dot) and distinct labels (that do not differ only in case,
/// which `prepare` refuses) get distinct names. Too long a label is refused.
pub fn path_component(label: &str) -> crate::Result<String> {
    let mut out = String::with_capacity(label.len());
    for (i, b) in label.bytes().enumerate() {
        let c = b.to_ascii_lowercase();
        match c {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => out.push(c as char),
            b'.' if i > 0 => out.push('.'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.is_empty() || out.len() > 200 {
        return Err(crate::Error::invalid(
            "label",
            format!("`{}` cannot name a directory: 1 to about 200 characters", label.escape_debug()),
        ));
    }
    Ok(out)
}
