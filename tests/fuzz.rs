//! A bounded mutation run over the parsers of user files, in stable Rust: every committed fixture
//! (GenePT in each form, `.h5ad` dense and CSR, the split TOML, a store's manifest) is damaged in
//! seeded ways (bytes flipped, overwritten with extreme values, cut short, spliced) and read
//! again. The property: no panic, and either a value or a clean error. `PTRAG_FUZZ_CASES=N` runs
//! N cases per fixture instead of the default (a longer run by hand).

mod common;
use common::TestRng;
use ptrag_engine::data::genept::GenePt;
use ptrag_engine::data::h5ad::H5ad;
use ptrag_engine::data::split::SplitFile;
use ptrag_engine::data::store::Store;
use std::path::Path;

fn cases() -> usize {
    std::env::var("PTRAG_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(60)
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real").join(name)
}

/// One damaged copy of `bytes`.
fn mutate(bytes: &[u8], rng: &mut TestRng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let pick = |rng: &mut TestRng, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    for _ in 0..1 + pick(rng, 4) {
        if b.is_empty() {
            break;
        }
        let at = pick(rng, b.len());
        match pick(rng, 5) {
            0 => b[at] ^= 1 << pick(rng, 8),
            // extreme values: sizes and counts declared by the file
            1 => {
                let value: [u8; 8] = [u64::MAX, 1 << 62, 0x7fff_ffff, 0][pick(rng, 4)].to_le_bytes();
                let end = (at + 8).min(b.len());
                b[at..end].copy_from_slice(&value[..end - at]);
            }
            2 => b.truncate(at),
            3 => {
                let len = pick(rng, 64).min(b.len() - at);
                let chunk = b[at..at + len].to_vec();
                let to = pick(rng, b.len());
                b.splice(to..to, chunk);
            }
            _ => b[at] = [0, 0xff, b'(', b'.', b']', b'h'][pick(rng, 6)],
        }
    }
    b
}

/// Reads `cases()` damaged copies of `file` with `read`; a panic fails the test, naming the case.
fn fuzz(file: &str, seed: u64, read: impl Fn(&Path) -> bool) -> usize {
    let original = std::fs::read(fixture(file)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    let mut rng = TestRng::new(seed);
    let mut ok = 0;
    for case in 0..cases() {
        let damaged = mutate(&original, &mut rng);
        std::fs::write(&path, &damaged).unwrap();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&path))) {
            Ok(parsed) => ok += parsed as usize,
            Err(_) => {
                let keep = std::env::temp_dir().join(format!("fuzz-panic-{case}-{file}"));
                std::fs::write(&keep, &damaged).unwrap();
                panic!("{file}, case {case}: the reader panicked (input kept in {})", keep.display());
            }
        }
    }
    ok
}

#[test]
fn damaged_genept_files_never_panic() {
    for (i, file) in ["genept.pickle", "genept_numpy.pickle", "genept_numpy5.pickle", "genept.npz", "genept.safetensors", "genept.tsv"]
        .iter()
        .enumerate()
    {
        fuzz(file, 10 + i as u64, |p| GenePt::read(p).is_ok());
    }
}

#[test]
fn damaged_h5ad_files_never_panic() {
    for (i, file) in ["dense_gzip.h5ad", "sparse.h5ad", "raw_counts.h5ad"].iter().enumerate() {
        fuzz(file, 20 + i as u64, |p| {
            let Ok(f) = H5ad::open(p) else { return false };
            let read = f.read(&["gene", "cell_line", "gem_group"]).is_ok();
            let inspected = ptrag_engine::data::inspect::inspect(p, "gene", "cell_line", "non-targeting").is_ok();
            read && inspected
        });
    }
}

#[test]
fn damaged_split_files_never_panic() {
    fuzz("split.toml", 30, |p| SplitFile::read(p).is_ok());
}

/// A store's manifest damaged: opening the store never panics.
#[test]
fn damaged_store_manifests_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    ptrag_engine::data::synth::generate(&ptrag_engine::data::synth::SynthConfig::preset("tiny", 3).unwrap(), &dir, false, false).unwrap();
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let mut rng = TestRng::new(40);
    for case in 0..cases() {
        std::fs::write(dir.join("manifest.json"), mutate(&manifest, &mut rng)).unwrap();
        let opened = std::panic::catch_unwind(|| Store::open(&dir).map(|s| s.n_cells()));
        assert!(opened.is_ok(), "manifest case {case}: Store::open panicked");
    }
}
