//! Observed responses: the mean expression change of every training condition of a fold, read
//! once from the fold's training conditions and control pools only. The baselines are built on
//! it, and so is the observed-response context of the retrieval models
//! (`--candidate-context responses|both`); the target cell type's validation and test cells are
//! never read, so neither can leak them (tests/responses.rs changes a test condition's cells).
//!
//! "Mean change" is a condition's mean expression minus the mean of its cell type's control pool.

use super::split::{Condition, Fold};
use super::store::Store;
use std::collections::BTreeMap;

pub struct ObservedResponses {
    pub genes: usize,
    /// Per cell type, the mean of its control pool.
    pub control_mean: Vec<Vec<f64>>,
    /// The mean change of every training condition but the control, by (perturbation, cell type).
    /// A BTreeMap: iteration (and so every average over it) has a fixed order.
    change: BTreeMap<(u32, u32), Vec<f64>>,
}

/// Mean expression of a set of cells.
pub fn mean_of(store: &Store, cells: &[u32]) -> Vec<f64> {
    let g = store.n_genes();
    let (mut sum, mut row) = (vec![0.0f64; g], vec![0.0f32; g]);
    for &c in cells {
        store.expression_row(c as usize, &mut row);
        sum.iter_mut().zip(&row).for_each(|(s, &v)| *s += v as f64);
    }
    sum.iter().map(|s| s / cells.len().max(1) as f64).collect()
}

/// The element-wise mean of some vectors of length `g`; none if there are none.
pub fn mean_of_vectors<'a>(vectors: impl Iterator<Item = &'a Vec<f64>>, g: usize) -> Option<Vec<f64>> {
    let (mut sum, mut n) = (vec![0.0; g], 0usize);
    for v in vectors {
        sum.iter_mut().zip(v).for_each(|(s, x)| *s += x);
        n += 1;
    }
    (n > 0).then(|| sum.into_iter().map(|s| s / n as f64).collect())
}

impl ObservedResponses {
    /// Reads `fold.train` and `fold.controls`, nothing else.
    pub fn fit(store: &Store, fold: &Fold) -> ObservedResponses {
        let control_mean: Vec<Vec<f64>> = fold.controls.iter().map(|pool| mean_of(store, pool)).collect();
        let mut responses = ObservedResponses { genes: store.n_genes(), control_mean, change: BTreeMap::new() };
        for c in fold.train.iter().filter(|c| c.perturbation != store.control_index) {
            let change = responses.change_of(store, c);
            responses.change.insert((c.perturbation, c.cell_type), change);
        }
        responses
    }

    /// Responses measured elsewhere: per cell type its control mean, and the mean change of each
    /// (perturbation, cell type) observed.
    pub fn from_parts(genes: usize, control_mean: Vec<Vec<f64>>, change: BTreeMap<(u32, u32), Vec<f64>>) -> ObservedResponses {
        ObservedResponses { genes, control_mean, change }
    }

    /// The observed mean change of a condition's cells (its cell type's control pool subtracted).
    /// The caller decides which conditions it may read: `fit` reads only training ones.
    pub fn change_of(&self, store: &Store, c: &Condition) -> Vec<f64> {
        let ctrl = &self.control_mean[c.cell_type as usize];
        mean_of(store, &c.cells).iter().zip(ctrl).map(|(m, c)| m - c).collect()
    }

    /// The mean change of `perturbation` in `cell_type`, if it is a training condition.
    pub fn change(&self, perturbation: u32, cell_type: u32) -> Option<&Vec<f64>> {
        self.change.get(&(perturbation, cell_type))
    }

    /// The mean change of `perturbation` averaged over the cell types other than `cell_type` in
    /// which it is a training condition; none if there are none.
    pub fn cross_cell_type(&self, perturbation: u32, cell_type: u32) -> Option<Vec<f64>> {
        let other = self.change.range((perturbation, 0)..=(perturbation, u32::MAX)).filter(|((_, ct), _)| *ct != cell_type);
        mean_of_vectors(other.map(|(_, v)| v), self.genes)
    }

    /// The mean of the observed changes in `cell_type` (each training perturbation once); zeros
    /// when none was observed there.
    pub fn mean_change_in(&self, cell_type: u32) -> Vec<f64> {
        let there = self.change.iter().filter(|((_, ct), _)| *ct == cell_type).map(|(_, v)| v);
        mean_of_vectors(there, self.genes).unwrap_or_else(|| vec![0.0; self.genes])
    }

    /// Root mean squared L2 norm of the observed changes (1 when there are none): the scale the
    /// response encoders' initialisation divides by.
    pub fn rms_norm(&self) -> f64 {
        let n = self.change.len();
        let sum: f64 = self.change.values().map(|v| v.iter().map(|x| x * x).sum::<f64>()).sum();
        if n == 0 || sum == 0.0 {
            1.0
        } else {
            (sum / n as f64).sqrt()
        }
    }
}
