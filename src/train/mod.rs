//! Training under the cross-cell-type few-shot protocol, validation, and the end-of-run report.
//!
//! Determinism: every step's batch comes from its own RNG stream (`seed`, step), and the model's
//! initialisation from stream 0, so a run resumed from a checkpoint continues with exactly the
//! batches, and on the CPU exactly the losses, of an uninterrupted run.

pub mod checkpoint;
pub mod optim;

use crate::data::sampler::{evaluation_sets, training_batch, Batch};
use crate::data::split::{Condition, Fold, SplitFile};
use crate::data::store::Store;
use crate::model::{energy_loss, state::StateModel, ModelConfig, ModelInput};
use crate::tape::{Params, Tape};
use crate::{Error, Result};
use optim::{Adam, AdamConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub adam: AdamConfig,
    pub steps: usize,
    pub sets_per_batch: usize,
    pub cells_per_set: usize,
    pub seed: u64,
    /// Validate (energy on the validation perturbations) every this many steps; 0 = only at the end.
    pub val_every: usize,
    pub target_cell_type: String,
    /// Initialise the output bias to the mean expression of (a sample of) the training cells.
    /// PyTorch's default initialisation (the reference's) when false.
    pub head_bias_from_data: bool,
}

fn rng_stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}
const INIT_STREAM: u64 = 0;
const EVAL_STREAM: u64 = u64::MAX;
const DATA_MEAN_STREAM: u64 = u64::MAX - 1;

pub struct StepStats {
    pub loss: f64,
    pub grad_norm: f64,
}

/// Per-condition evaluation results.
#[derive(Clone, Debug, Serialize)]
pub struct ConditionResult {
    pub perturbation: String,
    pub cell_type: String,
    pub cells: usize,
    pub energy: f64,
    /// MSE over genes of the predicted vs observed mean expression change (vs the control mean).
    pub mse_change: f64,
    /// The same for the baseline that predicts the control mean (a change of zero).
    pub mse_change_control_baseline: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalSummary {
    pub conditions: usize,
    pub energy: f64,
    pub mse_change: f64,
    pub mse_change_control_baseline: f64,
    pub per_condition: Vec<ConditionResult>,
}

pub struct Trainer<'s> {
    pub cfg: TrainConfig,
    pub store: &'s Store,
    pub fold: Fold,
    pub model: StateModel,
    pub params: Params<f32>,
    pub adam: Adam,
    pub step: usize,
}

impl<'s> Trainer<'s> {
    pub fn new(cfg: TrainConfig, store: &'s Store, split: &SplitFile, split_path: &Path) -> Result<Self> {
        if cfg.sets_per_batch == 0 || cfg.cells_per_set == 0 {
            return Err(Error::invalid("batch shape", "sets per batch and cells per set must be at least 1"));
        }
        let target = store.cell_type_index(&cfg.target_cell_type).ok_or_else(|| {
            Error::invalid(
                "target cell type",
                format!("`{}` is not in the data (have: {})", cfg.target_cell_type, store.manifest.cell_types.join(", ")),
            )
        })?;
        let fold = Fold::new(store, split, split_path, target)?;
        if fold.train.is_empty() {
            return Err(Error::invalid("split", "no training conditions left for this target cell type"));
        }
        let mut params = Params::new();
        let model = StateModel::new(&cfg.model, &mut params, &mut rng_stream(cfg.seed, INIT_STREAM));
        if cfg.head_bias_from_data {
            model.set_output_bias(&mut params, &training_mean(store, &fold, &mut rng_stream(cfg.seed, DATA_MEAN_STREAM)));
        }
        let adam = Adam::new(cfg.adam.clone(), &params);
        Ok(Trainer { cfg, store, fold, model, params, adam, step: 0 })
    }

    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.cfg).expect("config serialises")
    }

    /// The batch of step `step` (a pure function of the seed and the step).
    pub fn batch_for_step(&self, step: usize) -> Batch {
        let mut rng = rng_stream(self.cfg.seed, 1 + step as u64);
        training_batch(self.store, &self.fold, self.cfg.sets_per_batch, self.cfg.cells_per_set, &mut rng)
    }

    /// One optimisation step: forward, backward, clip, Adam. Fails on a non-finite loss or gradient.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let batch = self.batch_for_step(self.step);
        self.params.zero_grad();
        let mut tape = Tape::<f32>::new();
        let pred = self.model.forward(&mut tape, &self.params, &ModelInput::from_batch(&batch));
        let target = tape.constant(&[batch.sets * batch.cells, batch.genes], batch.target.clone());
        let loss = energy_loss(&mut tape, pred, target, batch.sets, batch.cells, batch.genes);
        let loss_value = tape.scalar(loss) as f64;
        if !loss_value.is_finite() {
            return Err(Error::Numerical { step: self.step, why: format!("loss is {loss_value}") });
        }
        tape.backward(loss).accumulate_into(&tape, &mut self.params);
        drop(tape);
        let grad_norm = Adam::grad_norm(&self.params);
        if !grad_norm.is_finite() {
            return Err(Error::Numerical { step: self.step, why: format!("gradient norm is {grad_norm}") });
        }
        self.adam.step(&mut self.params);
        self.step += 1;
        Ok(StepStats { loss: loss_value, grad_norm })
    }

    /// Predicted expression for a batch, `[sets * cells, genes]`.
    pub fn predict(&self, batch: &Batch) -> Vec<f32> {
        let mut tape = Tape::<f32>::new();
        let pred = self.model.forward(&mut tape, &self.params, &ModelInput::from_batch(batch));
        tape.value(pred).to_vec()
    }

    fn control_mean(&self, cell_type: usize) -> Vec<f64> {
        let g = self.store.n_genes();
        let pool = &self.fold.controls[cell_type];
        let mut mean = vec![0.0f64; g];
        let mut row = vec![0.0f32; g];
        for &c in pool {
            self.store.expression_row(c as usize, &mut row);
            mean.iter_mut().zip(&row).for_each(|(m, &v)| *m += v as f64);
        }
        mean.iter_mut().for_each(|m| *m /= pool.len() as f64);
        mean
    }

    /// Energy distance and mean-change MSE per condition (evaluation sets of at most S real cells).
    pub fn evaluate(&self, conditions: &[Condition]) -> EvalSummary {
        let g = self.store.n_genes();
        let mut rng = rng_stream(self.cfg.seed, EVAL_STREAM);
        let mut control_means: Vec<Option<Vec<f64>>> = vec![None; self.store.manifest.cell_types.len()];
        let mut per_condition = Vec::with_capacity(conditions.len());
        for cond in conditions {
            let ct = cond.cell_type as usize;
            let ctrl = control_means[ct].get_or_insert_with(|| self.control_mean(ct));
            let (mut pred_sum, mut real_sum) = (vec![0.0f64; g], vec![0.0f64; g]);
            let mut energy = 0.0;
            let sets = evaluation_sets(self.store, &self.fold, cond, self.cfg.cells_per_set, &mut rng);
            for set in &sets {
                let pred = self.predict(set);
                let mut e = [0.0f32];
                let shape = crate::cpu::energy::EnergyShape { sets: 1, cells_pred: set.cells, cells_obs: set.cells, genes: g };
                crate::cpu::energy::energy_forward(&pred, &set.target, shape, &mut e);
                energy += e[0] as f64 * set.cells as f64;
                for (row_p, row_r) in pred.chunks(g).zip(set.target.chunks(g)) {
                    pred_sum.iter_mut().zip(row_p).for_each(|(s, &v)| *s += v as f64);
                    real_sum.iter_mut().zip(row_r).for_each(|(s, &v)| *s += v as f64);
                }
            }
            let n = cond.cells.len() as f64;
            let (mut mse, mut base) = (0.0, 0.0);
            for i in 0..g {
                let real_change = real_sum[i] / n - ctrl[i];
                let pred_change = pred_sum[i] / n - ctrl[i];
                mse += (pred_change - real_change).powi(2);
                base += real_change.powi(2);
            }
            per_condition.push(ConditionResult {
                perturbation: self.store.manifest.perturbations[cond.perturbation as usize].clone(),
                cell_type: self.store.manifest.cell_types[ct].clone(),
                cells: cond.cells.len(),
                energy: energy / n,
                mse_change: mse / g as f64,
                mse_change_control_baseline: base / g as f64,
            });
        }
        let mean = |f: fn(&ConditionResult) -> f64| per_condition.iter().map(f).sum::<f64>() / per_condition.len().max(1) as f64;
        EvalSummary {
            conditions: per_condition.len(),
            energy: mean(|c| c.energy),
            mse_change: mean(|c| c.mse_change),
            mse_change_control_baseline: mean(|c| c.mse_change_control_baseline),
            per_condition,
        }
    }

    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        checkpoint::save(path, &self.params, &self.adam, self.step, &self.config_json())
    }

    /// Restores weights, optimiser state and step from a checkpoint of the same configuration.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<()> {
        let meta = checkpoint::read_meta(path)?;
        let saved: TrainConfig = serde_json::from_str(&meta.config_json)
            .map_err(|e| Error::bad_file(path, "metadata.config", format!("a ptrag-engine training config ({e})")))?;
        if saved.model != self.cfg.model {
            return Err(Error::bad_file(path, "metadata.config.model", "the same model architecture as this run"));
        }
        let meta = checkpoint::load(path, &mut self.params, &mut self.adam)?;
        self.step = meta.step;
        Ok(())
    }
}

/// Mean expression of up to 4096 training cells drawn at random (training conditions only).
fn training_mean(store: &Store, fold: &Fold, rng: &mut impl rand::Rng) -> Vec<f32> {
    let g = store.n_genes();
    let (mut sum, mut row) = (vec![0.0f64; g], vec![0.0f32; g]);
    let draws = 4096;
    for _ in 0..draws {
        let cond = &fold.train[rng.gen_range(0..fold.train.len())];
        store.expression_row(cond.cells[rng.gen_range(0..cond.cells.len())] as usize, &mut row);
        sum.iter_mut().zip(&row).for_each(|(s, &v)| *s += v as f64);
    }
    sum.iter().map(|s| (s / draws as f64) as f32).collect()
}

/// What `run` returns (also written to `metrics.json`).
#[derive(Serialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub best_step: usize,
    pub best_val_energy: f64,
    pub cells_per_second: f64,
    pub test: EvalSummary,
}

fn append_line(file: &mut std::fs::File, path: &Path, value: serde_json::Value) -> Result<()> {
    writeln!(file, "{value}").map_err(|e| Error::io(path, e))
}

/// Trains for `cfg.steps` in `run_dir` (log.jsonl, config.json, best/last checkpoints, metrics.json),
/// then evaluates the best checkpoint on the test split.
pub fn run(cfg: TrainConfig, store: &Store, split: &SplitFile, split_path: &Path, run_dir: &Path, progress: bool) -> Result<RunSummary> {
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let mut trainer = Trainer::new(cfg, store, split, split_path)?;
    let config_path = run_dir.join("config.json");
    crate::data::write_atomic(&config_path, serde_json::to_string_pretty(&trainer.cfg).expect("config serialises").as_bytes())?;
    let log_path = run_dir.join("log.jsonl");
    let mut log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let (best_path, last_path) = (run_dir.join("checkpoint-best.safetensors"), run_dir.join("checkpoint-last.safetensors"));

    let steps = trainer.cfg.steps;
    let cells_per_step = (trainer.cfg.sets_per_batch * trainer.cfg.cells_per_set) as f64;
    let bar = crate::progress::bar(steps as u64, "steps", progress);
    let start = std::time::Instant::now();
    let (mut best_val, mut best_step) = (f64::INFINITY, 0);
    let mut validate = |trainer: &Trainer, log: &mut std::fs::File| -> Result<()> {
        if trainer.fold.val.is_empty() {
            return Ok(());
        }
        let summary = trainer.evaluate(&trainer.fold.val);
        let val = summary.energy;
        append_line(
            log,
            &log_path,
            serde_json::json!({"step": trainer.step, "val_energy": val, "val_mse_change": summary.mse_change, "val_mse_change_control_baseline": summary.mse_change_control_baseline}),
        )?;
        if val < best_val {
            best_val = val;
            best_step = trainer.step;
            trainer.save_checkpoint(&best_path)?;
        }
        Ok(())
    };
    let mut smoothed = None;
    while trainer.step < steps {
        let t0 = std::time::Instant::now();
        let stats = trainer.train_step()?;
        let rate = cells_per_step / t0.elapsed().as_secs_f64();
        append_line(
            &mut log,
            &log_path,
            serde_json::json!({"step": trainer.step, "loss": stats.loss, "grad_norm": stats.grad_norm, "cells_per_s": rate, "elapsed_s": start.elapsed().as_secs_f64()}),
        )?;
        let s = smoothed.map_or(stats.loss, |s: f64| 0.9 * s + 0.1 * stats.loss);
        smoothed = Some(s);
        bar.set_message(format!("loss {s:.4} | {rate:.0} cells/s"));
        bar.inc(1);
        if trainer.cfg.val_every > 0 && trainer.step % trainer.cfg.val_every == 0 && trainer.step < steps {
            validate(&trainer, &mut log)?;
        }
    }
    validate(&trainer, &mut log)?;
    bar.finish_and_clear();
    trainer.save_checkpoint(&last_path)?;
    let cells_per_second = cells_per_step * steps as f64 / start.elapsed().as_secs_f64().max(1e-9);
    // Evaluate the best-on-validation weights (this run's: best_step is only set when it saved them).
    if best_step > 0 {
        trainer.load_checkpoint(&best_path)?;
    } else {
        best_step = trainer.step;
    }
    let test = trainer.evaluate(&trainer.fold.test);
    let summary = RunSummary { run_dir: run_dir.to_path_buf(), steps, best_step, best_val_energy: best_val, cells_per_second, test };
    crate::data::write_atomic(
        &run_dir.join("metrics.json"),
        serde_json::to_string_pretty(&summary).expect("summary serialises").as_bytes(),
    )?;
    Ok(summary)
}
