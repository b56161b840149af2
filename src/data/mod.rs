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
