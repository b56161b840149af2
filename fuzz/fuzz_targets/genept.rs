//! GenePT files: the first byte picks the form (pickle, npz, safetensors, TSV), the rest is the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&form, bytes)) = data.split_first() else { return };
    let ext = ["pickle", "npz", "safetensors", "tsv"][form as usize % 4];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("genept.{ext}"));
    std::fs::write(&path, bytes).unwrap();
    let _ = ptrag_engine::data::genept::GenePt::read(&path);
});
