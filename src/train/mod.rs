//! Training under the cross-cell-type few-shot protocol, and evaluation of a fold's conditions.
//!
//! Determinism: every step's batch, Gumbel noise and dropout come from that step's own RNG stream
//! (`seed`, 1 + step), the initialisation from stream 0 and evaluation from its own stream, so a run
//! resumed from a checkpoint continues with exactly the batches, and on the CPU exactly the losses,
//! of an uninterrupted run.

pub mod checkpoint;
pub mod device;
pub mod optim;
pub mod options;
pub mod run;

use crate::cpu::optim::Clip;
use crate::cuda::{Buffer, Gpu, Readback};
use crate::data::responses::ObservedResponses;
use crate::data::sampler::{evaluation_sets, training_batch, Batch};
use crate::data::split::{Condition, Fold, SplitFile};
use crate::data::store::Store;
use crate::model::knowledge::Knowledge;
use crate::model::{energy_loss, CandidateContext, Cells, Model, ModelConfig, ModelInput, ModelKind, Selection};
use crate::tape::{Params, Tape};
use crate::{Error, Result};
use device::GpuState;
use optim::{Adam, AdamConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// How PT-RAG selects candidates at evaluation (see `model::Selection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EvalSelection {
    /// Include a candidate iff its include logit is larger (`deterministic` in early run records).
    #[serde(alias = "deterministic")]
    Hard,
    /// Weight each candidate by its inclusion probability under sampling.
    Expected,
    /// Gumbel noise is sampled at evaluation too (the reference code).
    Sampled,
}

/// Which perturbations stage one may retrieve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RetrievalDatabase {
    /// Every perturbation with a GenePT vector, the control excluded (embeddings are public
    /// knowledge, not responses): our default.
    All,
    /// Only perturbations of this fold's training conditions (the paper's text).
    Training,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub target_cell_type: String,
    pub steps: usize,
    pub sets_per_batch: usize,
    pub cells_per_set: usize,
    pub seed: u64,
    /// Validate (energy on the validation perturbations) every this many steps; 0 = only at the end.
    pub val_every: usize,
    /// Initialise the output bias to the mean expression of (a sample of) the training cells.
    /// PyTorch's default initialisation (the reference's) when false.
    pub head_bias_from_data: bool,
    /// PT-RAG's sparsity weight: the loss adds `sparsity * mean(w)`.
    pub sparsity: f64,
    pub eval_selection: EvalSelection,
    pub retrieval_database: RetrievalDatabase,
    pub adam: AdamConfig,
    pub model: ModelConfig,
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
    /// The full loss (energy plus the sparsity term).
    pub loss: f64,
    pub energy: f64,
    /// PT-RAG: mean number of candidates selected per cell.
    pub selected: Option<f64>,
    pub grad_norm: f64,
    /// PT-RAG on the CPU: the gradient norm reaching the scorer MLP (`select.score_*`), the signal
    /// that would teach the selection (not read back from a GPU).
    pub scorer_grad_norm: Option<f64>,
}

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
    /// PT-RAG: mean number of candidates selected per cell.
    pub mean_selected: Option<f64>,
}

/// Which candidates one evaluated set retrieved and (PT-RAG) how many of its cells selected each.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetrievalRecord {
    pub perturbation: String,
    pub cell_type: String,
    /// Index of the set within its condition.
    pub set: usize,
    pub cells: usize,
    /// Candidate perturbations, most similar first.
    pub retrieved: Vec<String>,
    pub similarity: Vec<f32>,
    /// PT-RAG: per candidate, the number of the set's cells that selected it (under `expected`
    /// selection, the expected number).
    pub selected: Option<Vec<f64>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalSummary {
    pub conditions: usize,
    pub energy: f64,
    pub mse_change: f64,
    pub mse_change_control_baseline: f64,
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

pub struct Trainer<'s> {
    pub cfg: TrainConfig,
    pub store: &'s Store,
    pub fold: Fold,
    pub model: Model,
    pub params: Params<f32>,
    pub adam: Adam,
    pub step: usize,
    /// The training state on a GPU (`use_gpu`): then it, not `params` and `adam`, is current, and
    /// `sync_to_host` brings those up to date.
    pub gpu: Option<GpuState>,
}

/// Seconds by part of a training step: forward and backward per op family, and the rest.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StepBreakdown {
    pub forward: std::collections::BTreeMap<String, f64>,
    pub backward: std::collections::BTreeMap<String, f64>,
    pub other: std::collections::BTreeMap<String, f64>,
}

impl StepBreakdown {
    fn add(map: &mut std::collections::BTreeMap<String, f64>, times: &[(&str, f64)]) {
        times.iter().for_each(|(name, t)| *map.entry(name.to_string()).or_default() += t);
    }
}

/// One optimisation step on `batch`: forward (noise keys from `rng`), loss (energy plus the
/// sparsity term), backward, gradient norm, Adam with clipping; on the GPU when `gpu` holds the
/// training state (then `params` and `adam` on the host are not updated, see `GpuState::download`,
/// and the statistics are read by `PendingStats::finish`).
/// `breakdown` collects where the time went.
#[allow(clippy::too_many_arguments)]
pub fn optimise_step(
    model: &Model,
    params: &mut Params<f32>,
    adam: &mut Adam,
    mut gpu: Option<&mut GpuState>,
    sparsity: f64,
    batch: &Batch,
    rng: &mut ChaCha8Rng,
    step: usize,
    mut breakdown: Option<&mut StepBreakdown>,
) -> Result<PendingStats> {
    let clock = std::time::Instant::now();
    let noise = model.sample_noise(true, rng);
    if gpu.is_none() {
        params.zero_grad();
    }
    let prepare = clock.elapsed().as_secs_f64();
    let mut tape = GpuState::tape_for(gpu.as_deref()).timed_if(breakdown.is_some());
    // The cells' expression: gathered on the GPU from the resident dataset, or the batch's values.
    let table = gpu.as_deref().and_then(|state| state.expression.as_ref());
    let cells = |values, rows| match table {
        Some(table) => Cells::Rows { table, rows },
        None => Cells::Values(values),
    };
    let input = ModelInput {
        control: cells(&batch.control, &batch.control_rows),
        genept: gpu.as_deref().and_then(|state| state.genept.as_ref()),
        ..ModelInput::from_batch(batch, true, Selection::from_noise(noise.as_ref()))
    };
    let out = model.forward(&mut tape, params, &input);
    let target = cells(&batch.target, &batch.target_rows).on_tape(&mut tape, batch.sets * batch.cells, batch.genes);
    let energy = energy_loss(&mut tape, out.pred, target, batch.sets, batch.cells, batch.genes);
    let (mut loss, mut mean_w) = (energy, None);
    if let Some(w) = out.selection {
        let mean = tape.mean(w);
        mean_w = Some(mean);
        if sparsity > 0.0 {
            let term = tape.scale(mean, sparsity);
            loss = tape.add(energy, term);
        }
    }
    let grads = match breakdown.as_deref_mut() {
        Some(b) => {
            StepBreakdown::add(&mut b.forward, &tape.forward_timings());
            let (grads, times) = tape.backward_timed(loss);
            StepBreakdown::add(&mut b.backward, &times);
            grads
        }
        None => tape.backward(loss),
    };
    let mark = std::time::Instant::now();
    let (stats, accumulate) = match gpu.as_deref_mut() {
        Some(state) => {
            // The scalars stay on the GPU: `PendingStats::finish` reads them, after the caller has
            // queued the next step if it wants to.
            let [energy, loss] = [energy, loss].map(|v| tape.device_value(v));
            let (energy, loss, mean_w) = (energy?, loss?, mean_w.map(|v| tape.device_value(v)).transpose()?);
            let grads = grads.on_gpu(&tape, params.entries.len())?;
            drop(tape);
            let accumulate = mark.elapsed().as_secs_f64();
            let clip = state.update(params, adam, grads, &loss)?;
            // Copies queued now, behind this step's work only: reading them later does not wait for
            // the steps queued after this one.
            let scalars: Vec<&Buffer<f32>> = [&*energy, &*loss].into_iter().chain(mean_w.as_deref()).collect();
            let (scalars, clip) = (state.gpu.read_later(&scalars)?, state.gpu.read_later(&[&clip])?);
            (Pending::OnGpu { step, top_k: model.cfg.top_k, scalars, clip }, accumulate)
        }
        None => {
            let scalar = |v| -> Result<f64> { Ok(tape.fetch(v)?[0] as f64) };
            let (energy, loss) = (scalar(energy)?, scalar(loss)?);
            let selected = mean_w.map(&scalar).transpose()?.map(|w| w * model.cfg.top_k as f64);
            grads.accumulate_into(&tape, params)?;
            let scorer = params.entries.iter().filter(|p| p.name.starts_with("select.score"));
            let scorer_grad_norm = scorer.flat_map(|p| p.grad.iter().map(|&g| (g as f64).powi(2))).sum::<f64>().sqrt();
            let scorer_grad_norm = (model.cfg.kind == crate::model::ModelKind::PtRag).then_some(scorer_grad_norm);
            drop(tape);
            let accumulate = mark.elapsed().as_secs_f64();
            let clip = adam.step(params, loss as f32);
            let stats = StepStats { scorer_grad_norm, ..step_stats(step, energy, loss, selected, clip)? };
            (Pending::Ready(stats), accumulate)
        }
    };
    if let Some(b) = breakdown {
        if let Some(state) = gpu {
            state.gpu.synchronize()?;
        }
        let parts = [
            ("noise sampling, zeroing gradients", prepare),
            ("gradient accumulation", accumulate),
            ("norm, clipping and adam", mark.elapsed().as_secs_f64() - accumulate),
        ];
        StepBreakdown::add(&mut b.other, &parts);
    }
    Ok(PendingStats(stats))
}

/// A queued step's statistics: ready on the CPU; on a GPU still there, so that the caller can queue
/// the next step before waiting for this one (`finish`). A GPU step whose loss or gradient norm is
/// not finite has left the weights untouched; `finish` reports it.
pub struct PendingStats(Pending);

enum Pending {
    Ready(StepStats),
    OnGpu {
        step: usize,
        top_k: usize,
        /// energy, loss and (PT-RAG) the mean selection weight
        scalars: Readback<f32>,
        /// `{norm, scale, apply}` (`cuda::optim::clip`)
        clip: Readback<f64>,
    },
}

impl PendingStats {
    /// The step's statistics (on a GPU: waits for the step), or its numerical failure.
    pub fn finish(self) -> Result<StepStats> {
        let (step, top_k, scalars, clip) = match self.0 {
            Pending::Ready(stats) => return Ok(stats),
            Pending::OnGpu { step, top_k, scalars, clip } => (step, top_k, scalars, clip),
        };
        let clip = Clip::from_values(&clip.wait()?[0]);
        let scalars: Vec<f64> = scalars.wait()?.iter().map(|v| v[0] as f64).collect();
        let (energy, loss) = (scalars[0], scalars[1]);
        step_stats(step, energy, loss, scalars.get(2).map(|w| w * top_k as f64), clip)
    }
}

/// A step's statistics, or the numerical failure that stops the run when its update did not apply
/// (on either engine the weights are then untouched).
fn step_stats(step: usize, energy: f64, loss: f64, selected: Option<f64>, clip: Clip) -> Result<StepStats> {
    if !clip.apply {
        let why = if loss.is_finite() { format!("the gradient norm is {}", clip.norm) } else { format!("the loss is {loss}") };
        return Err(Error::Numerical { step, why });
    }
    Ok(StepStats { loss, energy, selected, grad_norm: clip.norm, scorer_grad_norm: None })
}

/// The GenePT table of a store and the retrieval database that `which` selects for `fold`.
pub fn knowledge_for(store: &Store, fold: &Fold, which: RetrievalDatabase) -> Result<Knowledge> {
    let p = store.manifest.n_perturbations();
    let mut in_db = match which {
        RetrievalDatabase::All => vec![true; p],
        RetrievalDatabase::Training => {
            let mut v = vec![false; p];
            fold.train.iter().for_each(|c| v[c.perturbation as usize] = true);
            v
        }
    };
    in_db[store.control_index as usize] = false;
    Knowledge::new(store.genept_table(), store.manifest.embed_dim, in_db)
}

/// The models other than STATE read GenePT vectors: a store prepared with `--genept none` has none.
pub fn needs_genept(kind: ModelKind, store: &Store) -> Result<()> {
    if kind.uses_genept() && !store.has_genept() {
        return Err(Error::invalid(
            "--model",
            format!(
                "`{}` needs GenePT vectors, and {} was prepared with --genept none; prepare it with --genept FILE, or train --model state",
                kind.name(),
                store.dir.display()
            ),
        ));
    }
    Ok(())
}

impl<'s> Trainer<'s> {
    pub fn new(cfg: TrainConfig, store: &'s Store, split: &SplitFile, split_path: &Path) -> Result<Self> {
        if cfg.sets_per_batch == 0 || cfg.cells_per_set == 0 {
            return Err(Error::invalid("batch shape", "sets per batch and cells per set must be at least 1"));
        }
        if !(cfg.sparsity >= 0.0 && cfg.sparsity.is_finite()) {
            return Err(Error::invalid("sparsity", format!("the sparsity weight must be >= 0, got {}", cfg.sparsity)));
        }
        needs_genept(cfg.model.kind, store)?;
        let m = &store.manifest;
        let data_dims = (m.n_genes(), m.n_perturbations(), m.n_batches);
        if (cfg.model.genes, cfg.model.perturbations, cfg.model.batches) != data_dims
            || (cfg.model.kind.uses_genept() && cfg.model.genept_dim != m.embed_dim)
        {
            return Err(Error::invalid("model config", format!("sized for different data than {}", store.dir.display())));
        }
        let target = store.cell_type_index(&cfg.target_cell_type).ok_or_else(|| {
            Error::invalid(
                "target cell type",
                format!("`{}` is not in the data (have: {}, or `all`)", cfg.target_cell_type, m.cell_types.join(", ")),
            )
        })?;
        let fold = Fold::new(store, split, split_path, target)?;
        if fold.train.is_empty() {
            return Err(Error::invalid("split", "no training conditions left for this target cell type"));
        }
        let knowledge = match cfg.model.kind.uses_genept() {
            false => None,
            true => {
                let knowledge = knowledge_for(store, &fold, cfg.retrieval_database)?;
                // Read from the fold's training conditions only (`ObservedResponses::fit`).
                let with_responses = cfg.model.candidate_context != CandidateContext::Genept;
                Some(if with_responses { knowledge.with_responses(ObservedResponses::fit(store, &fold)) } else { knowledge })
            }
        };
        let mut params = Params::new();
        let mut model = Model::new(&cfg.model, knowledge, &mut params, &mut rng_stream(cfg.seed, INIT_STREAM))?;
        if cfg.model.anchor_output {
            let means: Vec<Vec<f64>> = fold.controls.iter().map(|pool| crate::data::responses::mean_of(store, pool)).collect();
            model.set_output_anchor(&means);
        } else if cfg.head_bias_from_data {
            model.set_output_bias(&mut params, &training_mean(store, &fold, &mut rng_stream(cfg.seed, DATA_MEAN_STREAM)));
        }
        let adam = Adam::new(cfg.adam.clone(), &params);
        Ok(Trainer { cfg, store, fold, model, params, adam, step: 0, gpu: None })
    }

    /// The batch of step `step` and that step's RNG, positioned after the batch (for the noise):
    /// a pure function of the seed and the step.
    pub fn batch_for_step(&self, step: usize) -> (Batch, ChaCha8Rng) {
        let (batch, rng) = self.draw_batch(step);
        (batch.load_values(self.store), rng)
    }

    /// `batch_for_step` with the cells chosen but not read.
    fn draw_batch(&self, step: usize) -> (Batch, ChaCha8Rng) {
        let mut rng = rng_stream(self.cfg.seed, 1 + step as u64);
        let batch = training_batch(self.store, &self.fold, self.cfg.sets_per_batch, self.cfg.cells_per_set, &mut rng);
        (batch, rng)
    }

    /// Moves the training state and the dataset's expression onto `gpu`: training steps and
    /// evaluation run there from now on.
    /// Perturbations known only by their GenePT vectors (`[n, dim]`), appended after the store's
    /// for prediction (an in-silico screen); on the CPU engine.
    pub fn extend_perturbations(&mut self, extra: &[f32]) -> Result<()> {
        if self.gpu.is_some() {
            return Err(Error::invalid("GenePT-only perturbations", "predicted on the CPU engine only"));
        }
        self.model.extend_knowledge(extra)
    }

    pub fn use_gpu(&mut self, gpu: Arc<Gpu>) -> Result<()> {
        let mut state = GpuState::upload(gpu, &self.params, &self.adam)?;
        state.upload_expression(self.store)?;
        state.upload_genept(self.model.knowledge())?;
        self.gpu = Some(state);
        Ok(())
    }

    /// Brings `params` and `adam` up to date with the GPU's training state (a no-op on the CPU).
    pub fn sync_to_host(&mut self) -> Result<()> {
        match &self.gpu {
            Some(state) => state.download(&mut self.params, &mut self.adam),
            None => Ok(()),
        }
    }

    /// One optimisation step: forward, backward, clip, Adam. Fails, leaving the weights untouched,
    /// on a non-finite loss or gradient.
    pub fn train_step(&mut self) -> Result<StepStats> {
        self.queue_step()?.finish()
    }

    /// `train_step` without waiting for a GPU to finish it (the step counts as taken): the caller
    /// may queue the next one before `finish`ing this one. A run stops at a step that fails.
    pub fn queue_step(&mut self) -> Result<PendingStats> {
        let (mut batch, mut rng) = self.draw_batch(self.step);
        if self.gpu.as_ref().is_none_or(|state| state.expression.is_none()) {
            batch = batch.load_values(self.store);
        }
        let stats = optimise_step(
            &self.model,
            &mut self.params,
            &mut self.adam,
            self.gpu.as_mut(),
            self.cfg.sparsity,
            &batch,
            &mut rng,
            self.step,
            None,
        )?;
        self.step += 1;
        Ok(stats)
    }

    /// A tape over the current parameters: on the GPU when training there.
    fn tape(&self) -> Tape<f32> {
        GpuState::tape_for(self.gpu.as_ref())
    }

    /// An evaluation pass's input: with the GPU's GenePT table when evaluating there.
    fn input<'b>(&'b self, batch: &'b Batch, selection: Selection<'b>) -> ModelInput<'b> {
        ModelInput { genept: self.gpu.as_ref().and_then(|state| state.genept.as_ref()), ..ModelInput::from_batch(batch, false, selection) }
    }

    /// Prediction for a batch in evaluation mode (`eval_selection`, unless sampled: then hard), `[sets * cells, genes]`.
    pub fn predict(&self, batch: &Batch) -> Result<Vec<f32>> {
        let selection = if self.cfg.eval_selection == EvalSelection::Expected { Selection::Expected } else { Selection::Hard };
        let mut tape = self.tape();
        let out = self.model.forward(&mut tape, &self.params, &self.input(batch, selection));
        tape.fetch(out.pred)
    }

    /// An evaluation forward pass with the configured selection (sampled noise drawn from `rng`).
    fn eval_forward(&self, set: &Batch, rng: &mut ChaCha8Rng) -> (Tape<f32>, crate::model::Forward) {
        let noise = match self.cfg.eval_selection {
            EvalSelection::Sampled => self.model.sample_noise(false, rng),
            EvalSelection::Hard | EvalSelection::Expected => None,
        };
        let selection = match (&noise, self.cfg.eval_selection) {
            (Some(noise), _) => Selection::Sampled(noise),
            (None, EvalSelection::Expected) => Selection::Expected,
            (None, _) => Selection::Hard,
        };
        let mut tape = self.tape();
        let out = self.model.forward(&mut tape, &self.params, &self.input(set, selection));
        (tape, out)
    }

    /// The RNG evaluation draws from (control pairing, sampled selection): the same for every model
    /// of a run's seed, so models are compared on the same paired controls.
    pub fn eval_rng(&self) -> ChaCha8Rng {
        rng_stream(self.cfg.seed, EVAL_STREAM)
    }

    /// One condition's real cells, in sets of at most S, with their paired control cells and the
    /// model's predictions: `(predicted, real, paired controls)`, each `[cells, genes]`.
    pub fn predict_condition(&self, cond: &Condition, rng: &mut ChaCha8Rng) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (mut pred, mut real, mut control) = (Vec::new(), Vec::new(), Vec::new());
        for set in evaluation_sets(self.store, &self.fold, cond, self.cfg.cells_per_set, rng) {
            let (tape, out) = self.eval_forward(&set, rng);
            pred.extend_from_slice(&tape.fetch(out.pred)?);
            real.extend_from_slice(&set.target);
            control.extend_from_slice(&set.control);
        }
        Ok((pred, real, control))
    }

    /// The model's predicted cells for each set, concatenated `[cells, genes]`.
    pub fn predict_sets(&self, sets: &[Batch], rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
        let mut pred = Vec::new();
        for set in sets {
            let (tape, out) = self.eval_forward(set, rng);
            pred.extend_from_slice(&tape.fetch(out.pred)?);
        }
        Ok(pred)
    }

    fn control_mean(&self, cell_type: usize) -> Vec<f64> {
        crate::data::responses::mean_of(self.store, &self.fold.controls[cell_type])
    }

    /// Predicts every condition in sets of at most S real cells: energy distance and mean-change MSE
    /// per condition, and what retrieval returned and selected for every set.
    pub fn evaluate(&self, conditions: &[Condition]) -> Result<(EvalSummary, Vec<RetrievalRecord>)> {
        let g = self.store.n_genes();
        let names = &self.store.manifest.perturbations;
        let mut rng = rng_stream(self.cfg.seed, EVAL_STREAM);
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
                let (tape, out) = self.eval_forward(set, &mut rng);
                let pred = &tape.fetch(out.pred)?;
                if let Some(logits) = out.selection_logits {
                    gaps.extend(tape.fetch(logits)?.chunks(2).map(|l| (l[1] - l[0]) as f64));
                }
                let mut e = [0.0f32];
                let shape = crate::cpu::energy::EnergyShape { sets: 1, cells_pred: set.cells, cells_obs: set.cells, genes: g };
                crate::cpu::energy::energy_forward(pred, &set.target, shape, &mut e);
                energy += e[0] as f64 * set.cells as f64;
                for (row_p, row_r) in pred.chunks(g).zip(set.target.chunks(g)) {
                    pred_sum.iter_mut().zip(row_p).for_each(|(s, &v)| *s += v as f64);
                    real_sum.iter_mut().zip(row_r).for_each(|(s, &v)| *s += v as f64);
                }
                if let Some(r) = &out.retrieval {
                    // Every query row of a set shares the set's perturbation: the first one is the set's.
                    let k = self.cfg.model.top_k;
                    // Per candidate, the sum of its weights over the set's cells: how many cells selected
                    // it (the expected number under `Expected` selection).
                    let counts = match out.selection {
                        Some(w) => {
                            let mut counts = vec![0.0f64; k];
                            for cell in tape.fetch(w)?.chunks(k) {
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
            let (mut mse, mut base) = (0.0, 0.0);
            for i in 0..g {
                let real_change = real_sum[i] / n - ctrl[i];
                let pred_change = pred_sum[i] / n - ctrl[i];
                mse += (pred_change - real_change).powi(2);
                base += real_change.powi(2);
            }
            per_condition.push(ConditionResult {
                perturbation: names[cond.perturbation as usize].clone(),
                cell_type: self.store.manifest.cell_types[ct].clone(),
                cells: cond.cells.len(),
                energy: energy / n,
                mse_change: mse / g as f64,
                mse_change_control_baseline: base / g as f64,
                mean_selected: (self.cfg.model.kind == crate::model::ModelKind::PtRag).then_some(selected / n),
            });
        }
        let mean = |f: &dyn Fn(&ConditionResult) -> f64| per_condition.iter().map(f).sum::<f64>() / per_condition.len().max(1) as f64;
        let summary = EvalSummary {
            conditions: per_condition.len(),
            energy: mean(&|c| c.energy),
            mse_change: mean(&|c| c.mse_change),
            mse_change_control_baseline: mean(&|c| c.mse_change_control_baseline),
            mean_selected: per_condition.first().and_then(|c| c.mean_selected).map(|_| mean(&|c| c.mean_selected.unwrap_or(0.0))),
            logit_gap: GapStats::of(gaps),
            per_condition,
        };
        Ok((summary, records))
    }

    /// Saves the current weights and optimiser state (copied from the GPU when training there).
    pub fn save_checkpoint(&self, path: &Path, run_state: &str) -> Result<()> {
        let config = serde_json::to_string(&self.cfg).expect("config serialises");
        match &self.gpu {
            None => checkpoint::save(path, &self.params, &self.adam, self.step, &config, run_state),
            Some(state) => {
                let (mut params, mut adam) = (self.params.clone(), self.adam.clone());
                state.download(&mut params, &mut adam)?;
                checkpoint::save(path, &params, &adam, self.step, &config, run_state)
            }
        }
    }

    /// Restores weights, optimiser state and step from a checkpoint of the same model; returns its
    /// run state (best validation so far), as saved.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<String> {
        let meta = checkpoint::read_meta(path)?;
        let saved: TrainConfig = serde_json::from_str(&meta.config_json)
            .map_err(|e| Error::bad_file(path, "metadata.config", format!("a ptrag-engine training config ({e})")))?;
        if saved.model != self.cfg.model {
            return Err(Error::bad_file(path, "metadata.config.model", "the same model architecture as this run"));
        }
        let meta = checkpoint::load(path, &mut self.params, &mut self.adam)?;
        self.step = meta.step;
        if let Some(state) = &mut self.gpu {
            state.upload_weights(&self.params, &self.adam)?;
        }
        Ok(meta.run_state)
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

impl TrainConfig {
    /// The paper's settings for `kind` on `store`, with this project's short-schedule defaults.
    pub fn defaults(kind: crate::model::ModelKind, store: &Store, target_cell_type: &str) -> Self {
        let m = &store.manifest;
        TrainConfig {
            target_cell_type: target_cell_type.to_string(),
            steps: 400,
            sets_per_batch: 16,
            cells_per_set: 16,
            seed: 42,
            val_every: 100,
            head_bias_from_data: true,
            sparsity: 0.1,
            eval_selection: EvalSelection::Expected,
            retrieval_database: RetrievalDatabase::All,
            adam: AdamConfig::default(),
            model: ModelConfig::paper(kind, m.n_genes(), m.n_perturbations(), m.n_batches, m.embed_dim),
        }
    }
}
