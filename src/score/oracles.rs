//! Oracle rows, on synthetic stores only: not methods (they read the planted truth), but the
//! bounds a method's figure is read against.
//! - `oracle-truth` predicts each condition's planted change (`data::truth`): against the observed
//!   change its MSE is the noise floor, what no method can beat but by chance.
//! - `oracle-selection` predicts the mean observed change, in the target cell type, of the target's
//!   training perturbations that act with the query through a common active pathway there
//!   (`planted::PlantedTruth::relevant`): what a perfect selection of relevant candidates, then
//!   averaging, would give. A query with no such perturbation gets the target's training mean,
//!   and the report counts how often.

use super::baselines::Baselines;
use super::planted::PlantedTruth;
use crate::data::responses::mean_of_vectors;
use crate::data::split::Condition;
use crate::data::store::Store;
use crate::data::truth::TruthMeans;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oracle {
    Truth,
    Selection,
}

impl Oracle {
    pub const ALL: [Oracle; 2] = [Oracle::Truth, Oracle::Selection];
    pub fn name(self) -> &'static str {
        match self {
            Oracle::Truth => "oracle-truth",
            Oracle::Selection => "oracle-selection",
        }
    }
    pub fn is_oracle(name: &str) -> bool {
        Oracle::ALL.iter().any(|o| o.name() == name)
    }
}

/// A synthetic store's truth as evaluation reads it: the planted means and, where the store has
/// them, the planted pathways.
pub struct StoreTruth {
    pub means: TruthMeans,
    planted: Option<PlantedTruth>,
}

impl StoreTruth {
    /// None on a store without planted means (real data, or `replogle` without `synth --truth`).
    pub fn load(store: &Store) -> Result<Option<StoreTruth>> {
        let Some(means) = TruthMeans::load(store)? else { return Ok(None) };
        Ok(Some(StoreTruth { means, planted: PlantedTruth::load(store)? }))
    }

    /// The oracles this store can give.
    pub fn oracles(&self) -> Vec<Oracle> {
        Oracle::ALL.into_iter().filter(|&o| o == Oracle::Truth || self.planted.is_some()).collect()
    }

    /// The oracle's predicted mean change of `perturbation` in `baselines`' target cell type
    /// (`cell_type`), and whether `oracle-selection` fell back to the training mean.
    pub fn predict(&self, oracle: Oracle, store: &Store, baselines: &Baselines, perturbation: u32, cell_type: u32) -> (Vec<f64>, bool) {
        match (oracle, &self.planted) {
            (Oracle::Truth, _) => (self.means.change(perturbation, cell_type), false),
            (Oracle::Selection, None) => (baselines.training_mean().to_vec(), true),
            (Oracle::Selection, Some(planted)) => {
                let names = &store.manifest.perturbations;
                let ct = &store.manifest.cell_types[cell_type as usize];
                let query = &names[perturbation as usize];
                let relevant = baselines
                    .target_training_changes()
                    .filter(|(p, _)| *p != perturbation && planted.relevant(ct, query, &names[*p as usize]))
                    .map(|(_, c)| c);
                match mean_of_vectors(relevant, store.n_genes()) {
                    Some(mean) => (mean, false),
                    None => (baselines.training_mean().to_vec(), true),
                }
            }
        }
    }
}

/// A fold's test figures against the truth, as `train` reports them beside the model's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TruthFigures {
    /// The noise floor: mean over the test conditions of the MSE between the observed and the
    /// planted change (`oracle-truth` against the observed).
    pub floor: f64,
    /// Per baseline, its mean-change MSE against the planted change.
    pub baselines_mse_truth: BTreeMap<String, f64>,
    /// Per oracle, its mean-change MSE against the observed change and against the planted one.
    pub oracles: BTreeMap<String, (f64, f64)>,
    /// Test conditions for which `oracle-selection` had no relevant training perturbation.
    pub selection_fallbacks: usize,
    pub conditions: usize,
    /// The planted means' own Monte Carlo MSE in this cell type (`data::truth`).
    pub truth_mc_mse: f64,
}

impl TruthFigures {
    /// The figures of `conditions` (the target's test conditions).
    pub fn of(truth: &StoreTruth, store: &Store, baselines: &Baselines, conditions: &[Condition]) -> TruthFigures {
        let mse = super::metrics::mse;
        let n = conditions.len().max(1) as f64;
        let observed: Vec<Vec<f64>> = conditions.iter().map(|c| baselines.observed_change(store, c)).collect();
        let planted: Vec<Vec<f64>> = conditions.iter().map(|c| truth.means.change(c.perturbation, c.cell_type)).collect();
        let floor = observed.iter().zip(&planted).map(|(o, t)| mse(o, t)).sum::<f64>() / n;
        let baselines_mse_truth = baselines
            .available()
            .into_iter()
            .map(|b| {
                let total: f64 = conditions.iter().zip(&planted).map(|(c, t)| mse(&baselines.shift(b, c.perturbation), t)).sum();
                (b.name().to_string(), total / n)
            })
            .collect();
        let mut selection_fallbacks = 0;
        let mut oracles = BTreeMap::new();
        for oracle in truth.oracles() {
            let (mut against_observed, mut against_truth) = (0.0, 0.0);
            for ((c, o), t) in conditions.iter().zip(&observed).zip(&planted) {
                let (predicted, fell_back) = truth.predict(oracle, store, baselines, c.perturbation, c.cell_type);
                selection_fallbacks += (oracle == Oracle::Selection && fell_back) as usize;
                against_observed += mse(&predicted, o);
                against_truth += mse(&predicted, t);
            }
            oracles.insert(oracle.name().to_string(), (against_observed / n, against_truth / n));
        }
        let ct = conditions.first().map_or(0, |c| c.cell_type as usize);
        TruthFigures {
            floor,
            baselines_mse_truth,
            oracles,
            selection_fallbacks,
            conditions: conditions.len(),
            truth_mc_mse: truth.means.change_mc_mse(ct),
        }
    }
}
