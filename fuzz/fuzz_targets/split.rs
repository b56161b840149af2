//! cell-load split TOML files.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ptrag_engine::data::split::SplitFile::parse(std::path::Path::new("split.toml"), text);
    }
});
