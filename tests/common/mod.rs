//! Shared test helpers: tolerant comparison with a useful report, and a tiny seeded RNG.
#![allow(dead_code)]

pub mod numeric_options;
pub mod tolerance;

/// Fails with the worst index and the first mismatches when `|a - e| > atol + rtol * |e|` anywhere.
pub fn assert_close(actual: &[f64], expected: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let mut bad = Vec::new();
    let mut worst = (0usize, 0.0f64);
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (a - e).abs();
        let excess = err - (atol + rtol * e.abs());
        if excess > worst.1 || !a.is_finite() {
            worst = (i, excess.max(f64::MIN_POSITIVE));
        }
        if excess > 0.0 || !a.is_finite() {
            bad.push((i, a, e));
        }
    }
    if !bad.is_empty() {
        let first: Vec<String> = bad.iter().take(5).map(|(i, a, e)| format!("[{i}] got {a:.9e} want {e:.9e}")).collect();
        panic!(
            "{what}: {} of {} differ (atol {atol}, rtol {rtol}); worst index {}; first: {}",
            bad.len(),
            actual.len(),
            worst.0,
            first.join(", ")
        );
    }
}

/// `assert_close` with a named tolerance of `tolerance.rs`.
pub fn assert_within(actual: &[f64], expected: &[f64], tol: tolerance::Tol, what: &str) {
    assert_close(actual, expected, tol.atol, tol.rtol, what);
}

/// SplitMix64: deterministic test inputs without pulling the engine's RNG choices into tests.
pub struct TestRng(u64);
impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

use ptrag_engine::data::split::SplitFile;
use ptrag_engine::data::store::Store;
use ptrag_engine::data::synth::{self, SynthConfig};
use ptrag_engine::model::ModelKind;
use ptrag_engine::train::{TrainConfig, Trainer};

/// The built-in `tiny` data in a temporary directory (deleted when the guard drops).
pub fn tiny_store() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    synth::generate(&SynthConfig::preset("tiny", 11).unwrap(), &dir, true, false).unwrap();
    let store = Store::open(&dir).unwrap();
    (tmp, store)
}

/// A small configuration of `kind` for the tiny data: hidden 16, 2 layers, top-4, 3 sets of 8 cells, 6 steps.
pub fn small_config(store: &Store, kind: ModelKind) -> TrainConfig {
    let mut c = TrainConfig::defaults(kind, store, "K562");
    (c.model.hidden, c.model.layers, c.model.heads, c.model.head_dim, c.model.mlp, c.model.top_k) = (16, 2, 2, 4, 24, 4);
    (c.steps, c.sets_per_batch, c.cells_per_set, c.seed, c.val_every) = (6, 3, 8, 5, 0);
    c
}

pub fn trainer(store: &Store, cfg: TrainConfig) -> Trainer<'_> {
    let split = SplitFile::read(&store.split_path).unwrap();
    Trainer::new(cfg, store, &split, &store.split_path).unwrap()
}

/// The GPU, or None with the reason printed; a failure instead when `PTRAG_REQUIRE_GPU=1` (the
/// GPU-check script sets it).
pub fn cuda_or_skip() -> Option<ptrag_engine::cuda::Gpu> {
    match ptrag_engine::cuda::Gpu::cuda() {
        Ok(gpu) => Some(gpu),
        Err(e) if std::env::var("PTRAG_REQUIRE_GPU").is_ok_and(|v| v == "1") => panic!("PTRAG_REQUIRE_GPU=1 but no GPU: {e}"),
        Err(e) => {
            eprintln!("skipped (no GPU): {e}");
            None
        }
    }
}

/// A copy of `store` in `dir` whose `cells` have their expression changed (tripled, plus one).
pub fn copy_changing(store: &Store, dir: &std::path::Path, cells: &[u32]) -> Store {
    let cells: std::collections::HashSet<u32> = cells.iter().copied().collect();
    let g = store.n_genes();
    let mut w = ptrag_engine::data::store::StoreWriter::create(dir, g, store.manifest.expression_dtype).unwrap();
    let mut row = vec![0.0f32; g];
    for c in 0..store.n_cells() {
        store.expression_row(c, &mut row);
        if cells.contains(&(c as u32)) {
            row.iter_mut().for_each(|x| *x = 3.0 * *x + 1.0);
        }
        w.push_cell(&row, store.cell_perturbation[c], store.cell_type[c], store.cell_batch[c]).unwrap();
    }
    let split = std::fs::read_to_string(&store.split_path).unwrap();
    Store::open(w.finish(store.manifest.clone(), &store.genept_table(), &split, &[]).unwrap()).unwrap()
}
