//! Highly variable genes, scanpy's `flavor="seurat"` with `n_top_genes` (scanpy
//! `pp.highly_variable_genes` on log1p data, one batch), computed while cells stream past.
//!
//! Per gene, over the cells given: mean m and variance v (ddof 1) of `expm1(x)`; dispersion
//! `ln(v / m)` (NaN where v is 0; m of 0 taken as 1e-12); the gene's `ln(1 + m)` put into 20 equal
//! bins as `pandas.cut` does; the dispersion z-scored within its bin (a bin with one gene: that
//! gene's normalised dispersion is 1, as scanpy's post-processing makes it); the `n` highest
//! normalised dispersions kept, ties at the cut all kept, NaN never (scanpy 1.11). Compared with scanpy on `tests/fixtures/real/raw_counts.h5ad` (tests/prepare.rs).

use crate::{Error, Result};

/// scanpy's default number of mean bins.
pub const MEAN_BINS: usize = 20;

/// Running per-gene sums of `expm1(x)` and its square.
pub struct HvgAccumulator {
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
    cells: usize,
}

/// Per-gene statistics (scanpy's `var` columns `means`, `dispersions`, `dispersions_norm`) and the choice.
#[derive(Clone, Debug)]
pub struct HvgResult {
    pub means: Vec<f64>,
    pub dispersions: Vec<f64>,
    pub dispersions_norm: Vec<f64>,
    pub highly_variable: Vec<bool>,
}

impl HvgResult {
    /// Indices of the chosen genes, in the data's gene order.
    pub fn selected(&self) -> Vec<usize> {
        self.highly_variable.iter().enumerate().filter(|(_, &h)| h).map(|(i, _)| i).collect()
    }
}

impl HvgAccumulator {
    pub fn new(genes: usize) -> Self {
        HvgAccumulator { sum: vec![0.0; genes], sum_sq: vec![0.0; genes], cells: 0 }
    }

    /// One cell's log1p expression.
    pub fn push(&mut self, log_row: &[f32]) {
        debug_assert_eq!(log_row.len(), self.sum.len());
        for ((s, q), &x) in self.sum.iter_mut().zip(&mut self.sum_sq).zip(log_row) {
            // scanpy undoes the log in the matrix's own precision (float32), then sums in float64
            let y = x.exp_m1() as f64;
            *s += y;
            *q += y * y;
        }
        self.cells += 1;
    }

    /// The `n` most variable genes (more when several tie at the cut, as scanpy keeps them).
    pub fn finish(&self, n: usize) -> Result<HvgResult> {
        if self.cells < 2 {
            return Err(Error::invalid("--hvg", format!("at least 2 cells to measure variance, found {}", self.cells)));
        }
        if n == 0 {
            return Err(Error::invalid("--hvg", "at least 1 gene"));
        }
        let cells = self.cells as f64;
        let mut means = Vec::with_capacity(self.sum.len());
        let mut dispersions = Vec::with_capacity(self.sum.len());
        for (&s, &q) in self.sum.iter().zip(&self.sum_sq) {
            let mean = s / cells;
            let var = ((q / cells - mean * mean) * cells / (cells - 1.0)).max(0.0);
            let mean = if mean == 0.0 { 1e-12 } else { mean };
            let dispersion = var / mean;
            dispersions.push(if dispersion == 0.0 { f64::NAN } else { dispersion.ln() });
            means.push(mean.ln_1p());
        }
        let bins = mean_bins(&means, MEAN_BINS);
        // per bin: mean and sample std of the non-NaN dispersions (pandas' groupby skips NaN)
        let mut stats = vec![(0.0f64, 0.0f64, 0usize); MEAN_BINS];
        for (&b, &d) in bins.iter().zip(&dispersions) {
            if !d.is_nan() {
                stats[b].0 += d;
                stats[b].2 += 1;
            }
        }
        for (b, &d) in bins.iter().zip(&dispersions) {
            if !d.is_nan() {
                let mean = stats[*b].0 / stats[*b].2 as f64;
                stats[*b].1 += (d - mean).powi(2);
            }
        }
        let bin_avg_dev: Vec<(f64, f64)> = stats
            .iter()
            .map(|&(sum, sq, count)| {
                let avg = if count == 0 { f64::NAN } else { sum / count as f64 };
                let dev = if count < 2 { f64::NAN } else { (sq / (count as f64 - 1.0)).sqrt() };
                // scanpy: a bin whose std is undefined gets avg 0 and dev = its mean
                if dev.is_nan() {
                    (0.0, avg)
                } else {
                    (avg, dev)
                }
            })
            .collect();
        let dispersions_norm: Vec<f64> = bins
            .iter()
            .zip(&dispersions)
            .map(|(&b, &d)| {
                let (avg, dev) = bin_avg_dev[b];
                (d - avg) / dev
            })
            .collect();
        let mut ranked: Vec<f64> = dispersions_norm.iter().copied().filter(|v| !v.is_nan()).collect();
        if ranked.is_empty() {
            return Err(Error::invalid("--hvg", "genes with non-zero variance; every gene is constant over the kept cells"));
        }
        ranked.sort_by(|a, b| b.total_cmp(a));
        let cut = ranked[n.min(ranked.len()) - 1];
        let highly_variable = dispersions_norm.iter().map(|&v| !v.is_nan() && v >= cut).collect();
        Ok(HvgResult { means, dispersions, dispersions_norm, highly_variable })
    }
}

/// `pandas.cut(x, bins)` labels: `bins` equal-width intervals `(lo, hi]` over [min, max], the
/// lowest edge lowered by 0.1% of the range (numpy's linspace for the edges).
fn mean_bins(x: &[f64], bins: usize) -> Vec<usize> {
    let (mut mn, mut mx) = x.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let edges: Vec<f64> = if mn == mx {
        // pandas widens a constant range by 0.1% of the value (or 0.001) on each side
        let pad = if mn != 0.0 { 0.001 * mn.abs() } else { 0.001 };
        mn -= pad;
        mx += pad;
        linspace(mn, mx, bins + 1)
    } else {
        let mut e = linspace(mn, mx, bins + 1);
        e[0] -= (mx - mn) * 0.001;
        e
    };
    x.iter()
        .map(|&v| {
            // searchsorted(edges, v, side="left") - 1
            let above = edges.partition_point(|&e| e < v);
            above.saturating_sub(1).min(bins - 1)
        })
        .collect()
}

/// numpy's `linspace(start, stop, num)`: `i * step + start`, the last point exactly `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_follow_pandas_cut() {
        // pandas.cut([0, 1, 2, 3, 4, 10], 5).codes == [0, 0, 0, 1, 1, 4]
        assert_eq!(mean_bins(&[0.0, 1.0, 2.0, 3.0, 4.0, 10.0], 5), [0, 0, 0, 1, 1, 4]);
        // a constant range: one bin in the middle, pandas.cut([1, 1], 4).codes == [1, 1]
        assert_eq!(mean_bins(&[1.0, 1.0], 4), [1, 1]);
    }

    #[test]
    fn constant_genes_are_never_chosen_and_ties_at_the_cut_are_kept() {
        let mut acc = HvgAccumulator::new(3);
        for c in 0..10 {
            let v = c as f32;
            acc.push(&[1.0, (v / 10.0).ln_1p(), (v * 3.0).ln_1p() * (c % 2) as f32]);
        }
        let r = acc.finish(1).unwrap();
        assert!(r.dispersions[0].is_nan() && r.dispersions_norm[0].is_nan(), "a constant gene has no dispersion");
        // genes 1 and 2 fall alone into their mean bins: both normalised to 1, so both are kept
        assert_ne!(mean_bins(&r.means, MEAN_BINS)[1], mean_bins(&r.means, MEAN_BINS)[2]);
        assert_eq!((r.dispersions_norm[1], r.dispersions_norm[2]), (1.0, 1.0));
        assert_eq!(r.selected(), [1, 2]);
    }
}
