//! Training under the cross-cell-type few-shot protocol, and evaluation of a fold's conditions.
//!
//! Determinism: every step's batch, Gumbel noise and dropout come from that step's own RNG stream
//! (`seed`, 1 + step), the initialisation from stream 0 and evaluation from its own stream, so a run
//! resumed from a checkpoint continues with exactly the batches, and on the CPU exactly the losses,
//! of an uninterrupted run.

pub mod checkpoint;
pub mod device;
mod fold;
mod held_out;
pub mod optim;
pub mod options;
pub mod run;
pub mod run_dir;
mod step;

pub use held_out::{ConditionResult, EvalSummary, GapStats};
pub use step::{optimise_step, PendingStats, StepBreakdown, StepStats};

use crate::cpu::optim::Clip;
use crate::cuda::{Buffer, Gpu, Readback};
use crate::data::responses::ObservedResponses;
use crate::data::sampler::{evaluation_sets, training_batch, Batch};
use crate::data::split::{Condition, Fold, SplitFile};
use crate::data::store::Store;
use crate::model::knowledge::Knowledge;
use crate::model::{
    energy_loss, upgrade_saved_model, CandidateContext, Cells, Model, ModelConfig, ModelInput, ModelKind, OutputAnchor, PerCondition,
    Selection,
};
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
    /// At test: draws of paired control cells over which a model's predicted mean change is
    /// averaged (`predict_condition_drawn`); validation uses one. Runs recorded before it: 1.
    #[serde(default = "one")]
    pub eval_draws: usize,
    pub retrieval_database: RetrievalDatabase,
    pub adam: AdamConfig,
    pub model: ModelConfig,
}

impl TrainConfig {
    /// A configuration saved by this or an earlier version of the engine (a run record's `train`
    /// table, a checkpoint's config) from its JSON form (`upgrade_saved_model`); `field` names
    /// where in `source` it was read, for the error.
    pub fn from_saved(mut saved: serde_json::Value, source: &Path, field: &str) -> Result<TrainConfig> {
        if let Some(model) = saved.get_mut("model") {
            upgrade_saved_model(model).map_err(|e| Error::bad_file(source, format!("{field}.model"), e.to_string()))?;
        }
        serde_json::from_value(saved).map_err(|e| Error::bad_file(source, field, format!("a ptrag-engine training config ({e})")))
    }
}

/// `--output-anchor linear`'s anchor: per condition of the fold, its cell type's control mean plus
/// `linear`'s predicted change (`baselines::linear_for_every_condition`: a ridge per cell type,
/// cross-fitted for training conditions); per cell type, for any other condition, the control mean
/// plus the mean training change `shifts`.
fn linear_anchor(store: &Store, fold: &Fold, shifts: &[Vec<f64>]) -> Result<(Vec<Vec<f64>>, PerCondition)> {
    if store.manifest.embed_dim == 0 {
        return Err(Error::invalid("--output-anchor linear", "the `linear` baseline needs GenePT vectors, and this store has none"));
    }
    let control_means: Vec<Vec<f64>> = fold.controls.iter().map(|pool| crate::data::responses::mean_of(store, pool)).collect();
    let plus = |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x + y).collect() };
    let per_cell_type = control_means.iter().zip(shifts).map(|(m, s)| plus(m, s)).collect();
    let per_condition = crate::score::baselines::linear_for_every_condition(store, fold)?
        .into_iter()
        .map(|((p, ct), change)| ((p, ct), plus(&control_means[ct as usize], &change)))
        .collect();
    Ok((per_cell_type, per_condition))
}

fn rng_stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}
const INIT_STREAM: u64 = 0;
const EVAL_STREAM: u64 = u64::MAX;
const DATA_MEAN_STREAM: u64 = u64::MAX - 1;
const EVAL_DRAWS_STREAM: u64 = u64::MAX - 2;

fn one() -> usize {
    1
}

/// The default of `--eval-draws`: the control-draw noise it leaves in a model's mean-change MSE is
/// under 5% of the noise floor on the built-in data (docs/design.md, "Fair evaluation").
pub const DEFAULT_EVAL_DRAWS: usize = 8;

/// The most `--eval-draws` `train` and `evaluate` take: each draw predicts every test condition
/// again, so more would only make a run that never finishes (10,000 draws leave 1/10,000 of one
/// draw's noise).
pub const MAX_EVAL_DRAWS: usize = 10_000;

/// One condition's prediction: the first draw's predicted, real and paired control cells, each
/// `[cells, genes]`, and the predicted mean over every draw, `[genes]`.
pub struct DrawnPrediction {
    pub pred: Vec<f32>,
    pub real: Vec<f32>,
    pub paired: Vec<f32>,
    pub mean_pred: Vec<f64>,
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
        if cfg.model.output_anchor != OutputAnchor::None {
            let observed = ObservedResponses::fit(store, &fold);
            let shifts: Vec<Vec<f64>> = (0..fold.controls.len() as u32).map(|c| observed.mean_change_in(c)).collect();
            match cfg.model.output_anchor {
                OutputAnchor::None => {}
                OutputAnchor::Shift => model.set_output_anchor(&shifts, Default::default()),
                OutputAnchor::Linear => {
                    let (per_cell_type, per_condition) = linear_anchor(store, &fold, &shifts)?;
                    model.set_output_anchor(&per_cell_type, per_condition);
                }
            }
        }
        // The stacked model's head starts at zero (`Model::new`).
        if cfg.head_bias_from_data && cfg.model.output_anchor != OutputAnchor::Linear {
            model.set_output_bias(&mut params, &training_mean(store, &fold, &mut rng_stream(cfg.seed, DATA_MEAN_STREAM)));
        }
        let adam = Adam::new(cfg.adam.clone(), &params);
        Ok(Trainer { cfg, store, fold, model, params, adam, step: 0, gpu: None })
    }

    /// The batch of step `step` and that step's RNG, positioned after the batch (for the noise):
    /// a pure function of the seed and the step.
    pub fn batch_for_step(&self, step: usize) -> (Batch, ChaCha8Rng) {
        let (batch, rng) = self.draw_batch(step);
        (batch.with_values(self.store), rng)
    }

    /// `batch_for_step` with the cells chosen but not read.
    fn draw_batch(&self, step: usize) -> (Batch, ChaCha8Rng) {
        let mut rng = rng_stream(self.cfg.seed, 1 + step as u64);
        let batch = training_batch(self.store, &self.fold, self.cfg.sets_per_batch, self.cfg.cells_per_set, &mut rng);
        (batch, rng)
    }

    /// Perturbations known only by their GenePT vectors (`[n, dim]`), appended after the store's
    /// for prediction (an in-silico screen); on the CPU engine.
    pub fn extend_perturbations(&mut self, extra: &[f32]) -> Result<()> {
        if self.gpu.is_some() {
            return Err(Error::invalid("GenePT-only perturbations", "predicted on the CPU engine only"));
        }
        self.model.extend_knowledge(extra)
    }

    /// Moves the training state and the dataset's expression onto `gpu`: training steps and
    /// evaluation run there from now on, and retrieval's neighbour table is made there.
    pub fn use_gpu(&mut self, gpu: Arc<Gpu>) -> Result<()> {
        if let Some(knowledge) = self.model.knowledge() {
            knowledge.compute_neighbours_on(&gpu, self.cfg.model.top_k)?;
        }
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
        self.model.cfg.tau = self.cfg.model.tau_at(self.step, self.cfg.steps);
        let (mut batch, mut rng) = self.draw_batch(self.step);
        if GpuState::resident_expression(self.gpu.as_ref()).is_none() {
            batch = batch.with_values(self.store);
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
    fn input<'b>(&'b self, batch: &'b Batch, selection: Selection<'b>) -> Result<ModelInput<'b>> {
        Ok(ModelInput {
            genept: self.gpu.as_ref().and_then(|state| state.genept.as_ref()),
            ..ModelInput::from_batch(batch, false, selection)?
        })
    }

    /// Prediction for a batch in evaluation mode (`eval_selection`, unless sampled: then hard), `[sets * cells, genes]`.
    pub fn predict(&self, batch: &Batch) -> Result<Vec<f32>> {
        let selection = if self.cfg.eval_selection == EvalSelection::Expected { Selection::Expected } else { Selection::Hard };
        let mut tape = self.tape();
        let out = self.model.forward(&mut tape, &self.params, &self.input(batch, selection)?);
        tape.fetch(out.pred)
    }

    /// An evaluation forward pass with the configured selection (sampled noise drawn from `rng`).
    fn eval_forward(&self, set: &Batch, rng: &mut ChaCha8Rng) -> Result<(Tape<f32>, crate::model::Forward)> {
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
        let out = self.model.forward(&mut tape, &self.params, &self.input(set, selection)?);
        Ok((tape, out))
    }

    /// The RNG evaluation draws from (control pairing, sampled selection): the same for every model
    /// of a run's seed, so models are compared on the same paired controls.
    pub fn eval_rng(&self) -> ChaCha8Rng {
        rng_stream(self.cfg.seed, EVAL_STREAM)
    }

    /// One condition's real cells, in sets of at most S, with their paired control cells and the
    /// model's predictions: `(predicted, real, paired controls)`, each `[cells, genes]` (one draw).
    pub fn predict_condition(&self, cond: &Condition, rng: &mut ChaCha8Rng) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let one = self.predict_condition_drawn(cond, 1, rng, &mut self.draws_rng())?;
        Ok((one.pred, one.real, one.paired))
    }

    /// The RNG that further control draws come from (`predict_condition_drawn`): a stream of its
    /// own, so that the first draw, and every baseline, is the same whatever the number of draws.
    pub fn draws_rng(&self) -> ChaCha8Rng {
        rng_stream(self.cfg.seed, EVAL_DRAWS_STREAM)
    }

    /// `predict_condition` (its first draw, from `rng`), with the predicted mean averaged over
    /// `draws` pairings of the real cells with control cells: the first, then `draws - 1` more from
    /// `draws_rng` (`further_draws`). A baseline's mean is exact; a model's, from one pairing,
    /// carries the sampled control cells' noise, which the average removes.
    pub fn predict_condition_drawn(
        &self,
        cond: &Condition,
        draws: usize,
        rng: &mut ChaCha8Rng,
        draws_rng: &mut ChaCha8Rng,
    ) -> Result<DrawnPrediction> {
        let g = self.store.n_genes();
        let (mut pred, mut real, mut paired) = (Vec::new(), Vec::new(), Vec::new());
        let mut sum = vec![0.0f64; g];
        for set in evaluation_sets(self.store, &self.fold, cond, self.cfg.cells_per_set, rng) {
            let (tape, out) = self.eval_forward(&set, rng)?;
            let first = tape.fetch(out.pred)?;
            add_rows(&mut sum, &first);
            add_rows_f64(&mut sum, &self.further_draws(&set, draws, draws_rng)?);
            pred.extend_from_slice(&first);
            let cells = set.values()?;
            real.extend_from_slice(&cells.target);
            paired.extend_from_slice(&cells.control);
        }
        let n = (cond.cells.len() * draws.max(1)) as f64;
        Ok(DrawnPrediction { pred, real, paired, mean_pred: sum.iter().map(|s| s / n).collect() })
    }

    /// The set's predicted cells `[genes]`-summed over `draws - 1` further pairings of its real
    /// cells with control cells drawn from `draws_rng`.
    pub fn further_draws(&self, set: &Batch, draws: usize, draws_rng: &mut ChaCha8Rng) -> Result<Vec<f64>> {
        let mut sum = vec![0.0f64; self.store.n_genes()];
        for _ in 1..draws {
            let repaired = set.repaired(self.store, &self.fold.controls[set.cell_type[0] as usize], draws_rng);
            let (tape, out) = self.eval_forward(&repaired, draws_rng)?;
            add_rows(&mut sum, &tape.fetch(out.pred)?);
        }
        Ok(sum)
    }

    /// The model's predicted cells for each set, concatenated `[cells, genes]`.
    pub fn predict_sets(&self, sets: &[Batch], rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
        let mut pred = Vec::new();
        for set in sets {
            let (tape, out) = self.eval_forward(set, rng)?;
            pred.extend_from_slice(&tape.fetch(out.pred)?);
        }
        Ok(pred)
    }

    fn control_mean(&self, cell_type: usize) -> Vec<f64> {
        crate::data::responses::mean_of(self.store, &self.fold.controls[cell_type])
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
        let saved: serde_json::Value = serde_json::from_str(&meta.config_json)
            .map_err(|e| Error::bad_file(path, "metadata.config", format!("a ptrag-engine training config ({e})")))?;
        let saved = TrainConfig::from_saved(saved, path, "metadata.config")?;
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

/// Adds every row of `rows` (`[n, sum.len()]`) into `sum`.
fn add_rows(sum: &mut [f64], rows: &[f32]) {
    for row in rows.chunks(sum.len().max(1)) {
        sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
    }
}
fn add_rows_f64(sum: &mut [f64], row: &[f64]) {
    sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
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
            eval_draws: DEFAULT_EVAL_DRAWS,
            retrieval_database: RetrievalDatabase::All,
            adam: AdamConfig::default(),
            model: ModelConfig::paper(kind, m.n_genes(), m.n_perturbations(), m.n_batches, m.embed_dim),
        }
    }
}
