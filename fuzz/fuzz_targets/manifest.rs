//! A store's `manifest.json`, beside the tiny built-in store's other files (made once per process).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static STORE: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = STORE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = ptrag_engine::data::synth::SynthConfig::preset("tiny", 3).unwrap();
        ptrag_engine::data::synth::generate(&cfg, &tmp.path().join("s"), false, false).unwrap();
        tmp
    });
    let store = dir.path().join("s");
    std::fs::write(store.join("manifest.json"), data).unwrap();
    let _ = ptrag_engine::data::store::Store::open(&store);
});
