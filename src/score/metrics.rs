//! The per-condition metrics of the paper (Appendix B), on plain row-major `f64` matrices
//! (`[cells, dims]`).
//!
//! - DEGs: Welch's t-test of real perturbed vs control cells per gene (`DegRule`); all genes when
//!   none passes.
//! - Pearson / Spearman over the DEGs between predicted and observed mean expression changes.
//! - MSE / RMSE / MAE between predicted and observed mean expression (pseudobulk).
//! - Between the predicted and real cell clouds: exact optimal-transport W1 and W2 (equal-size
//!   clouds, uniform weights: an assignment problem, solved exactly), the energy distance and an
//!   RBF-kernel MMD with the median-heuristic bandwidth.

use super::stats::{mean_var, welch_t_test};
use crate::{Error, Result};

/// Which genes count as differentially expressed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DegRule {
    /// The paper: Welch p < 0.05.
    Paper,
    /// The reference code: Welch p <= 0.1 and |log2((mean perturbed + 1) / (mean control + 1))| >= 0.05.
    Reference,
}

fn column_stats(x: &[f64], dims: usize) -> Vec<(f64, f64, usize)> {
    let n = x.len() / dims;
    (0..dims)
        .map(|j| {
            let col: Vec<f64> = (0..n).map(|i| x[i * dims + j]).collect();
            let (m, v) = mean_var(&col);
            (m, v, n)
        })
        .collect()
}

/// The DEG mask of a condition from its real cells and the control cells, `[genes]`.
pub fn deg_mask(real: &[f64], control: &[f64], genes: usize, rule: DegRule) -> Vec<bool> {
    let (r, c) = (column_stats(real, genes), column_stats(control, genes));
    let mask: Vec<bool> = r
        .iter()
        .zip(&c)
        .map(|(&a, &b)| {
            let p = welch_t_test(a, b);
            match rule {
                DegRule::Paper => p < 0.05,
                DegRule::Reference => p <= 0.1 && ((a.0 + 1.0) / (b.0 + 1.0)).log2().abs() >= 0.05,
            }
        })
        .collect();
    if mask.iter().any(|&m| m) {
        mask
    } else {
        vec![true; genes]
    }
}

/// Column means of `[rows, dims]`.
pub fn mean_rows(x: &[f64], dims: usize) -> Vec<f64> {
    let n = (x.len() / dims).max(1) as f64;
    let mut m = vec![0.0; dims];
    for row in x.chunks(dims) {
        m.iter_mut().zip(row).for_each(|(m, &v)| *m += v);
    }
    m.iter_mut().for_each(|v| *v /= n);
    m
}

/// Pearson correlation; 0 when either side is constant (no linear relation can be measured).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "pearson: lengths");
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    if va <= 0.0 || vb <= 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

/// Spearman correlation: Pearson of the average ranks.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&super::stats::average_ranks(a).0, &super::stats::average_ranks(b).0)
}

pub fn mse(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len().max(1) as f64
}
pub fn mae(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len().max(1) as f64
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// Mean of `f(|a_i - b_j|^2)` over all ordered pairs (diagonal included when `a` is `b`).
fn mean_pairs(a: &[f64], b: &[f64], dims: usize, f: impl Fn(f64) -> f64) -> f64 {
    let (n, m) = (a.len() / dims, b.len() / dims);
    let mut s = 0.0;
    for x in a.chunks(dims) {
        for y in b.chunks(dims) {
            s += f(sq_dist(x, y));
        }
    }
    s / (n * m) as f64
}

/// Energy distance `2 E|X - Y| - E|X - X'| - E|Y - Y'|` (V-statistic: means over all pairs).
/// This is twice the training loss's value (without its distance floor).
pub fn energy_distance(x: &[f64], y: &[f64], dims: usize) -> f64 {
    2.0 * mean_pairs(x, y, dims, f64::sqrt) - mean_pairs(x, x, dims, f64::sqrt) - mean_pairs(y, y, dims, f64::sqrt)
}

/// Squared MMD (V-statistic) with the kernel `exp(-|a - b|^2 / (2 s^2))`, `s` the median distance
/// between distinct points of the pooled sample (1 if that median is 0).
pub fn mmd_rbf(x: &[f64], y: &[f64], dims: usize) -> f64 {
    let pooled: Vec<&[f64]> = x.chunks(dims).chain(y.chunks(dims)).collect();
    let mut d: Vec<f64> = Vec::new();
    for i in 0..pooled.len() {
        for j in i + 1..pooled.len() {
            d.push(sq_dist(pooled[i], pooled[j]).sqrt());
        }
    }
    d.sort_by(f64::total_cmp);
    let median = match d.len() {
        0 => 1.0,
        n if n % 2 == 1 => d[n / 2],
        n => 0.5 * (d[n / 2 - 1] + d[n / 2]),
    };
    let s2 = if median > 0.0 { median * median } else { 1.0 };
    let k = |d2: f64| (-d2 / (2.0 * s2)).exp();
    mean_pairs(x, x, dims, k) + mean_pairs(y, y, dims, k) - 2.0 * mean_pairs(x, y, dims, k)
}

/// Minimum-cost perfect matching of an `n x n` cost matrix (shortest augmenting paths with
/// potentials, O(n^3)); returns `assign[row] = column`.
pub fn min_cost_assignment(cost: &[f64], n: usize) -> Vec<usize> {
    assert_eq!(cost.len(), n * n, "assignment: cost matrix size");
    // 1-based arrays with a virtual column 0, as in the classical formulation.
    let (mut u, mut v) = (vec![0.0f64; n + 1], vec![0.0f64; n + 1]);
    let (mut row_of, mut way) = (vec![0usize; n + 1], vec![0usize; n + 1]);
    for row in 1..=n {
        row_of[0] = row;
        let mut col0 = 0;
        let mut min_to = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[col0] = true;
            let (r0, mut delta, mut col1) = (row_of[col0], f64::INFINITY, 0);
            for col in 1..=n {
                if !used[col] {
                    let reduced = cost[(r0 - 1) * n + col - 1] - u[r0] - v[col];
                    if reduced < min_to[col] {
                        min_to[col] = reduced;
                        way[col] = col0;
                    }
                    if min_to[col] < delta {
                        delta = min_to[col];
                        col1 = col;
                    }
                }
            }
            for col in 0..=n {
                if used[col] {
                    u[row_of[col]] += delta;
                    v[col] -= delta;
                } else {
                    min_to[col] -= delta;
                }
            }
            col0 = col1;
            if row_of[col0] == 0 {
                break;
            }
        }
        // Flip the augmenting path.
        loop {
            let prev = way[col0];
            row_of[col0] = row_of[prev];
            col0 = prev;
            if col0 == 0 {
                break;
            }
        }
    }
    let mut assign = vec![0; n];
    for col in 1..=n {
        if row_of[col] > 0 {
            assign[row_of[col] - 1] = col - 1;
        }
    }
    assign
}

/// Exact Wasserstein distances between two clouds of the same size with uniform weights:
/// `(W1, W2)`, `W_p = (min over matchings of mean |x_i - y_match(i)|^p)^(1/p)`.
pub fn wasserstein(x: &[f64], y: &[f64], dims: usize) -> Result<(f64, f64)> {
    let (n, m) = (x.len() / dims, y.len() / dims);
    if n != m || n == 0 {
        return Err(Error::invalid("Wasserstein distance", format!("needs two non-empty clouds of the same size, got {n} and {m}")));
    }
    let sq: Vec<f64> = x.chunks(dims).flat_map(|a| y.chunks(dims).map(move |b| sq_dist(a, b))).collect();
    let dist: Vec<f64> = sq.iter().map(|d| d.sqrt()).collect();
    let cost_of = |c: &[f64], assign: &[usize]| assign.iter().enumerate().map(|(i, &j)| c[i * n + j]).sum::<f64>() / n as f64;
    let w1 = cost_of(&dist, &min_cost_assignment(&dist, n));
    let w2 = cost_of(&sq, &min_cost_assignment(&sq, n)).sqrt();
    Ok((w1, w2))
}

/// What a metric compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// Predicted and real mean change over the real cells' differentially expressed genes.
    DegChange,
    /// Predicted and real mean expression over all genes.
    Genes,
    /// Predicted and real cells in the principal components of the real cells.
    Pca,
    /// The predicted mean change against the planted one (synthetic stores with `data::truth`
    /// means; NaN, shown as absent, elsewhere).
    Truth,
    /// The real cells alone.
    RealCells,
}

/// One metric of a report: its name (a column of `per_condition.csv`), its direction, what it
/// compares, and whether it is a count that describes the condition rather than scores a model
/// (counts are reported, never tested between models or drawn as a score).
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub higher_is_better: bool,
    pub space: Space,
    pub is_count: bool,
}

const fn score(name: &'static str, higher_is_better: bool, space: Space) -> Metric {
    Metric { name, higher_is_better, space, is_count: false }
}

/// The metrics of a report, in the order of `ConditionRow::values`: reports, statistics and figures
/// iterate over this table. A new metric is one entry here and one arm in `report::metric_value`.
pub const METRICS: [Metric; 13] = [
    score("pearson_deg", true, Space::DegChange),
    score("spearman_deg", true, Space::DegChange),
    score("mse", false, Space::Genes),
    score("rmse", false, Space::Genes),
    score("mae", false, Space::Genes),
    score("mse_pca", false, Space::Pca),
    score("w1", false, Space::Pca),
    score("w2", false, Space::Pca),
    score("energy", false, Space::Pca),
    score("mmd", false, Space::Pca),
    score("mse_truth", false, Space::Truth),
    score("pearson_deg_truth", true, Space::Truth),
    Metric { name: "degs", higher_is_better: false, space: Space::RealCells, is_count: true },
];

/// The position of the metric `name` in `METRICS` (and so in `ConditionRow::values`).
pub fn metric_index(name: &str) -> Option<usize> {
    METRICS.iter().position(|m| m.name == name)
}

/// The metrics that score a model, with their positions: every one but the counts.
pub fn scores() -> impl Iterator<Item = (usize, &'static Metric)> {
    METRICS.iter().enumerate().filter(|(_, m)| !m.is_count)
}

/// One model's (or baseline's) metrics on one condition.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConditionRow {
    pub model: String,
    pub target: String,
    pub perturbation: String,
    pub cell_type: String,
    pub cells: usize,
    /// In the order of `METRICS`.
    pub values: Vec<f64>,
}
