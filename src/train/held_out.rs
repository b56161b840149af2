//! A trainer on held-out conditions (validation and test): per-condition energy and mean-change
//! MSE, the selection's logit gap, and which candidates each set retrieved. (`eval/` evaluates
//! finished runs and prediction files; `score/` holds the measures.)

use super::*;
use crate::score::metrics;
use crate::score::retrieval::RetrievalRecord;

/// Per-condition evaluation results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConditionResult {
    pub perturbation: String,
    pub cell_type: String,
    pub cells: usize,
    pub energy: f64,
    /// MSE over genes of the predicted vs observed mean expression change (vs the control mean).
    pub mse_change: f64,
    /// The same for the baseline that predicts the control mean (a change of zero).
    pub mse_change_control_baseline: f64,
    /// MSE over genes of the predicted vs the planted change (stores with planted means).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mse_change_truth: Option<f64>,
    /// PT-RAG: mean number of candidates selected per cell.
    pub mean_selected: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSummary {
    pub conditions: usize,
    pub energy: f64,
    pub mse_change: f64,
    pub mse_change_control_baseline: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mse_change_truth: Option<f64>,
    /// Draws of paired control cells the predicted mean change is averaged over.
    #[serde(default = "one")]
    pub draws: usize,
    pub mean_selected: Option<f64>,
    /// PT-RAG: the distribution of the include-exclude logit gap over every (cell, candidate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_gap: Option<GapStats>,
    pub per_condition: Vec<ConditionResult>,
}

/// Mean, standard deviation and 10th / 50th / 90th percentiles of the include-exclude logit gap
/// (logits as scaled for the Gumbel-Softmax): a selection that discriminates spreads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GapStats {
    pub mean: f64,
    pub sd: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
}

impl GapStats {
    fn of(mut gaps: Vec<f64>) -> Option<GapStats> {
        if gaps.is_empty() {
            return None;
        }
        gaps.sort_by(f64::total_cmp);
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n).sqrt();
        let at = |q: f64| gaps[((q * (n - 1.0)).round() as usize).min(gaps.len() - 1)];
        Some(GapStats { mean, sd, p10: at(0.1), p50: at(0.5), p90: at(0.9) })
    }
}

impl Trainer<'_> {
    /// A model whose weights overflowed (e.g. at an absurd --lr) gives non-finite outputs: an error at
    /// the current step, never a NaN figure in a report.
    fn refuse_non_finite(&self, what: &str, values: &[f32]) -> Result<()> {
        match values.iter().find(|v| !v.is_finite()) {
            Some(v) => Err(Error::Numerical { step: self.step, why: format!("the model's {what} are not finite ({v}) in evaluation") }),
            None => Ok(()),
        }
    }

    /// Predicts every condition in sets of at most S real cells: energy distance and mean-change MSE
    /// per condition, and what retrieval returned and selected for every set. The predicted mean
    /// change is averaged over `draws` pairings with control cells (`predict_condition_drawn`); the
    /// energy and the retrieval records are the first draw's. With `truth`, the mean change is also
    /// compared with the planted one.
    pub fn evaluate(
        &self,
        conditions: &[Condition],
        draws: usize,
        truth: Option<&crate::data::truth::TruthMeans>,
    ) -> Result<(EvalSummary, Vec<RetrievalRecord>)> {
        let g = self.store.n_genes();
        let names = &self.store.manifest.perturbations;
        let mut rng = rng_stream(self.cfg.seed, EVAL_STREAM);
        let mut draws_rng = self.draws_rng();
        let mut control_means: Vec<Option<Vec<f64>>> = vec![None; self.store.manifest.cell_types.len()];
        let mut per_condition = Vec::with_capacity(conditions.len());
        let mut records = Vec::new();
        let mut gaps = Vec::new();
        for cond in conditions {
            let ct = cond.cell_type as usize;
            let ctrl = control_means[ct].get_or_insert_with(|| self.control_mean(ct));
            let (mut pred_sum, mut real_sum) = (vec![0.0f64; g], vec![0.0f64; g]);
            let (mut energy, mut selected) = (0.0, 0.0);
            let sets = evaluation_sets(self.store, &self.fold, cond, self.cfg.cells_per_set, &mut rng);
            for (set_index, set) in sets.iter().enumerate() {
                let (tape, out) = self.eval_forward(set, &mut rng)?;
                let pred = &tape.fetch(out.pred)?;
                self.refuse_non_finite("predictions", pred)?;
                if let Some(logits) = out.selection_logits {
                    gaps.extend(tape.fetch(logits)?.chunks(2).map(|l| (l[1] - l[0]) as f64));
                }
                let mut e = [0.0f32];
                let shape = crate::cpu::energy::EnergyShape { sets: 1, cells_pred: set.cells, cells_obs: set.cells, genes: g };
                crate::cpu::energy::energy_forward(pred, &set.values()?.target, shape, &mut e);
                energy += e[0] as f64 * set.cells as f64;
                add_rows(&mut pred_sum, pred);
                add_rows(&mut real_sum, &set.values()?.target);
                add_rows_f64(&mut pred_sum, &self.further_draws(set, draws, &mut draws_rng)?);
                if let Some(r) = &out.retrieval {
                    // Every query row of a set shares the set's perturbation: the first one is the set's.
                    let k = self.cfg.model.top_k;
                    // Per candidate, the sum of its weights over the set's cells: how many cells selected
                    // it (the expected number under `Expected` selection).
                    let counts = match out.selection {
                        Some(w) => {
                            let mut counts = vec![0.0f64; k];
                            let weights = tape.fetch(w)?;
                            self.refuse_non_finite("selection weights", &weights)?;
                            for cell in weights.chunks(k) {
                                counts.iter_mut().zip(cell).for_each(|(c, &x)| *c += x as f64);
                            }
                            selected += counts.iter().sum::<f64>();
                            Some(counts)
                        }
                        None => None,
                    };
                    records.push(RetrievalRecord {
                        perturbation: names[cond.perturbation as usize].clone(),
                        cell_type: self.store.manifest.cell_types[ct].clone(),
                        set: set_index,
                        cells: set.cells,
                        retrieved: r.candidates[..k].iter().map(|&c| names[c as usize].clone()).collect(),
                        similarity: r.similarity[..k].to_vec(),
                        selected: counts,
                    });
                }
            }
            let n = cond.cells.len() as f64;
            let change = |sum: &[f64], n: f64| -> Vec<f64> { sum.iter().zip(ctrl.iter()).map(|(s, c)| s / n - c).collect() };
            let (real_change, pred_change) = (change(&real_sum, n), change(&pred_sum, n * draws.max(1) as f64));
            per_condition.push(ConditionResult {
                perturbation: names[cond.perturbation as usize].clone(),
                cell_type: self.store.manifest.cell_types[ct].clone(),
                cells: cond.cells.len(),
                energy: energy / n,
                mse_change: metrics::mse(&pred_change, &real_change),
                mse_change_control_baseline: metrics::mse(&real_change, &vec![0.0; g]),
                mse_change_truth: truth.map(|t| metrics::mse(&pred_change, &t.change(cond.perturbation, cond.cell_type))),
                mean_selected: (self.cfg.model.kind == crate::model::ModelKind::PtRag).then_some(selected / n),
            });
        }
        let mean = |f: &dyn Fn(&ConditionResult) -> f64| per_condition.iter().map(f).sum::<f64>() / per_condition.len().max(1) as f64;
        let summary = EvalSummary {
            conditions: per_condition.len(),
            energy: mean(&|c| c.energy),
            mse_change: mean(&|c| c.mse_change),
            mse_change_control_baseline: mean(&|c| c.mse_change_control_baseline),
            mse_change_truth: truth.map(|_| mean(&|c| c.mse_change_truth.unwrap_or(f64::NAN))),
            draws,
            mean_selected: per_condition.first().and_then(|c| c.mean_selected).map(|_| mean(&|c| c.mean_selected.unwrap_or(0.0))),
            logit_gap: GapStats::of(gaps),
            per_condition,
        };
        Ok((summary, records))
    }
}
