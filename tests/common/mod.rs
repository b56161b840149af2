//! Shared test helpers: tolerant comparison with a useful report, and a tiny seeded RNG.
#![allow(dead_code)]

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
