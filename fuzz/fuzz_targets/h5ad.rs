//! `.h5ad` files: opened, read whole with the Replogle-Nadig obs columns, and inspected.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.h5ad");
    std::fs::write(&path, data).unwrap();
    if let Ok(f) = ptrag_engine::data::h5ad::H5ad::open(&path) {
        let _ = f.read(&["gene", "cell_line", "gem_group"]);
    }
    let _ = ptrag_engine::data::inspect::inspect(&path, "gene", "cell_line", "non-targeting");
});
