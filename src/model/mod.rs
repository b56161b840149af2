//! The four models of the paper. They share the basal (control-cell) encoder, the batch embedding,
//! the Llama backbone over each set and the output head; they differ in how the perturbation is
//! encoded and in what the backbone receives (docs/design.md, "The four models"):
//!
//! | model        | perturbation encoder        | backbone input                                   |
//! |--------------|-----------------------------|--------------------------------------------------|
//! | STATE        | one-hot, Linear(P -> H)     | basal + pert + batch                             |
//! | STATE+GenePT | GenePT, Linear(E -> H)      | basal + pert + batch                             |
//! | Vanilla RAG  | GenePT, Linear(E -> H)      | cross-attention(basal + pert -> top-K) + batch   |
//! | PT-RAG       | GenePT, Linear(E -> H)      | sum of selected projected triplets + batch       |
//!
//! and `pred = ReLU(Linear(H -> G)(backbone(x) + basal))` for all four.
//!
//! Retrieval and candidate encoding depend only on a set's perturbation, so they run once per set
//! (stage one) and once per distinct candidate in the batch (encoding). `per_cell_retrieval` runs
//! them once per cell instead, as the reference code does; the results are identical (tested).

pub mod backbone;
mod config;
pub mod context;
mod input;
pub mod knowledge;
pub mod layers;
pub mod memory;
mod responses;

pub mod beyond;
pub use beyond::{BeyondPaper, OutputAnchor};
pub use config::{upgrade_saved_model, CandidateContext, LogitNorm, ModelConfig, ModelKind, SelfExclusion};
pub use input::{Cells, ModelInput, Noise, Selection};

use crate::cpu::elementwise::DropoutMask;
use crate::cpu::energy::EnergyShape;
use crate::scalar::Scalar;
use crate::tape::{ParamId, Params, RowTable, Tape, Var};
use crate::{Error, Result};
use backbone::Backbone;
use context::{CrossAttention, Selector};
use knowledge::Knowledge;
use layers::{normal, uniform_fan_in, Linear};
use rand::Rng;
use responses::{response_rows, similarity_features, ResponseEncoders};
use std::borrow::Cow;
use std::collections::HashMap;

/// Stage one's result for a batch: `rows` queries (one per set, or one per cell) with `K` candidates.
pub struct Retrieval {
    pub rows: usize,
    /// `[rows, K]` perturbation indices, best first.
    pub candidates: Vec<u32>,
    /// `[rows, K]` cosine similarities.
    pub similarity: Vec<f32>,
    /// With observed responses, `[rows, K]`: whether each candidate's change in the row's cell
    /// type was observed; empty without them.
    pub observed: Vec<bool>,
}

/// Stage one's encodings: queries `[rows, H]`, candidates `[rows * K, H]`, and with observed
/// responses the candidates' encoder input `[rows * K, G + 1]` (changes, then the indicator).
struct Encoded {
    query: Var,
    candidates: Var,
    candidate_changes: Option<Var>,
}

/// What a forward pass produces.
pub struct Forward {
    /// `[sets * cells, genes]` predicted expression.
    pub pred: Var,
    /// PT-RAG: `[sets * cells * K, 1]`, the selection weights (exactly 0 or 1 unless `Selection::Expected`).
    pub selection: Option<Var>,
    /// PT-RAG: `[sets * cells * K, 2]`, the (exclude, include) logits as scaled for the Gumbel-Softmax.
    pub selection_logits: Option<Var>,
    pub retrieval: Option<Retrieval>,
}

enum PertEncoder {
    /// The one-hot Linear(P -> H), stored as its transposed weight (a `[P, H]` table) so that encoding
    /// is a row lookup: identical result and parameter count.
    OneHot {
        table: ParamId,
        bias: ParamId,
    },
    Genept(Linear),
}

enum Context {
    None,
    CrossAttention(CrossAttention),
    Selector(Selector),
}

pub struct Model {
    pub cfg: ModelConfig,
    basal: Linear,
    pert: PertEncoder,
    batch_table: ParamId,
    context: Context,
    backbone: Backbone,
    head: Linear,
    responses: Option<ResponseEncoders>,
    /// `Linear(F -> H)` of the candidates' similarity features (`similarity_features` only).
    similarity: Option<Linear>,
    /// What `output_anchor` adds to the head (empty until `set_output_anchor`).
    anchor: OutputAnchorValues,
    knowledge: Option<Knowledge>,
}

/// A vector `[G]` per condition, by (perturbation, cell type).
pub type PerCondition = HashMap<(u32, u32), Vec<f64>>;

/// What the output adds to the head (`Model::set_output_anchor`).
#[derive(Default)]
struct OutputAnchorValues {
    /// `[cell types][G]`, for a condition not in `per_condition`.
    per_cell_type: Vec<Vec<f64>>,
    /// By (perturbation, cell type).
    per_condition: PerCondition,
}

impl OutputAnchorValues {
    fn of(&self, perturbation: u32, cell_type: u32) -> &[f64] {
        self.per_condition.get(&(perturbation, cell_type)).unwrap_or(&self.per_cell_type[cell_type as usize])
    }
}

impl Model {
    /// Registers the parameters (initialised from `rng`) and returns the model. GenePT-based models
    /// need `knowledge`; retrieval needs more than `top_k` perturbations in its database.
    pub fn new<T: Scalar>(cfg: &ModelConfig, knowledge: Option<Knowledge>, params: &mut Params<T>, rng: &mut impl Rng) -> Result<Self> {
        cfg.validate()?;
        let (g, h) = (cfg.genes, cfg.hidden);
        let knowledge = checked_knowledge(cfg, knowledge)?;
        let basal = Linear::new(params, rng, "basal", g, h, true);
        let pert = pert_encoder(cfg, knowledge.as_ref(), params, rng);
        let batch_table = params.add("batch.weight", &[cfg.batches, h], T::from_f32_slice(&normal(rng, cfg.batches * h, 1.0)));
        let context = match cfg.kind {
            ModelKind::State | ModelKind::StateGenept => Context::None,
            ModelKind::VanillaRag => Context::CrossAttention(CrossAttention::new(params, rng, h)),
            ModelKind::PtRag => Context::Selector(Selector::new(params, rng, h)),
        };
        let backbone = Backbone::new(cfg, params, rng);
        let head = Linear::new(params, rng, "head", h, g, true);
        // Registered last, so that every other parameter starts as in the paper's models.
        let responses = ResponseEncoders::new(cfg, knowledge.as_ref(), params, rng)?;
        let similarity = cfg.similarity_features.then(|| {
            let features = if responses.is_some() { 2 } else { 1 };
            Linear::new(params, rng, "similarity", features, h, false)
        });
        if cfg.output_anchor == OutputAnchor::Linear {
            // The correction starts at exactly zero: at step 0 the model is the anchor.
            let gate = responses.as_ref().and_then(|r| r.readout_gate);
            for id in [Some(head.weight), head.bias, gate].into_iter().flatten() {
                let n = params.entries[id.0].value.len();
                params.entries[id.0].value = std::sync::Arc::new(vec![T::zero(); n]);
            }
        }
        if cfg.frozen_backbone {
            for p in params.entries.iter_mut() {
                if p.name.starts_with("layers.") || p.name == "final_norm" || p.name.starts_with("head.") {
                    p.trainable = false;
                }
            }
        }
        Ok(Model {
            cfg: cfg.clone(),
            basal,
            pert,
            batch_table,
            context,
            backbone,
            head,
            responses,
            similarity,
            anchor: OutputAnchorValues::default(),
            knowledge,
        })
    }

    /// Appends perturbations known only by their GenePT vectors (`[n, dim]`), never retrieved;
    /// their indices follow the store's. For the GenePT-based models only.
    pub fn extend_knowledge(&mut self, extra: &[f32]) -> Result<()> {
        let k = self.knowledge.take().ok_or_else(|| Error::invalid("GenePT vectors", "STATE has no GenePT encoder"))?;
        self.knowledge = Some(k.extended(extra)?);
        Ok(())
    }

    pub fn knowledge(&self) -> Option<&Knowledge> {
        self.knowledge.as_ref()
    }

    /// Sets the output bias to `mean` (typically the training cells' mean expression), so that a
    /// short run starts from the population mean instead of spending its first steps learning it.
    pub fn set_output_bias<T: Scalar>(&self, params: &mut Params<T>, mean: &[f32]) {
        let bias = &mut params.entries[self.head.bias.expect("the head has a bias").0];
        assert_eq!(bias.value.len(), mean.len(), "output bias length");
        bias.value = std::sync::Arc::new(T::from_f32_slice(mean));
    }

    /// What the output adds (`output_anchor`): per (perturbation, cell type) where given, else per
    /// cell type. For `shift`, each cell type's mean change over its training perturbations; for
    /// `linear`, the cell type's control mean plus `linear`'s change per condition, and for a
    /// condition beyond those (a screened perturbation) the control mean plus the mean training change.
    pub fn set_output_anchor(&mut self, per_cell_type: &[Vec<f64>], per_condition: PerCondition) {
        self.anchor = OutputAnchorValues { per_cell_type: per_cell_type.to_vec(), per_condition };
    }

    /// Draws the keys of PT-RAG's Gumbel noise (and of the scorer's dropout mask when `training`);
    /// none for the other models. The noise itself is drawn from the keys where it is used.
    pub fn sample_noise(&self, training: bool, rng: &mut impl Rng) -> Option<Noise> {
        if self.cfg.kind != ModelKind::PtRag {
            return None;
        }
        let gumbel_key = rng.gen();
        let p = self.cfg.scorer_dropout;
        let dropout = (training && p > 0.0).then(|| DropoutMask::new(rng.gen(), p));
        Some(Noise { gumbel_key, dropout })
    }

    /// GenePT vectors of `perts` through the perturbation encoder: `[perts.len(), H]`.
    fn encode_genept<T: Scalar>(&self, tape: &mut Tape<T>, params: &Params<T>, perts: &[u32], resident: Option<&RowTable>) -> Var {
        let (k, PertEncoder::Genept(lin)) = (self.knowledge.as_ref().expect("GenePT model has knowledge"), &self.pert) else {
            unreachable!("encode_genept on a one-hot model")
        };
        let x = match resident {
            Some(table) => tape.table_rows(table, perts),
            None => {
                let rows = perts.iter().flat_map(|&p| k.vectors[p as usize * k.dim..][..k.dim].iter().map(|&v| T::f(v as f64)));
                tape.constant(&[perts.len(), k.dim], rows.collect())
            }
        };
        lin.apply(tape, params, x)
    }

    /// Encodes every perturbation of `perts` once (the distinct ones) and returns `[perts.len(), H]`.
    fn encode_distinct<T: Scalar>(&self, tape: &mut Tape<T>, params: &Params<T>, perts: &[u32], resident: Option<&RowTable>) -> Var {
        let mut distinct = perts.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let encoded = self.encode_genept(tape, params, &distinct, resident);
        let rows: Vec<usize> = perts.iter().map(|p| distinct.binary_search(p).expect("present")).collect();
        tape.gather(encoded, &rows)
    }

    /// Stage one for every query row, and the encodings of queries `[rows, H]` and candidates `[rows * K, H]`.
    fn retrieve<T: Scalar>(&self, tape: &mut Tape<T>, params: &Params<T>, input: &ModelInput) -> (Retrieval, Encoded) {
        let k = self.cfg.top_k;
        let knowledge = self.knowledge.as_ref().expect("retrieval model has knowledge");
        let per_cell = self.cfg.per_cell_retrieval;
        let rows = if per_cell { input.sets * input.cells } else { input.sets };
        let set_of_row = |r: usize| if per_cell { r / input.cells } else { r };
        let queries: Vec<u32> = (0..rows).map(|r| input.perturbation[set_of_row(r)]).collect();
        let buggy = self.cfg.self_exclusion == SelfExclusion::FirstSetInTraining && input.training;
        let exclude: Vec<bool> = (0..rows).map(|r| !(buggy && set_of_row(r) > 0)).collect();
        let (candidates, similarity) = knowledge.retrieve(&queries, &exclude, k);
        let mut query_enc = self.encode_genept(tape, params, &queries, input.genept);
        let genept_candidates = self.cfg.candidate_context != CandidateContext::Responses;
        // The reference's formulation (per cell) encodes every cell's candidates; ours each distinct one.
        let mut cand_enc = match (genept_candidates, per_cell) {
            (false, _) => None,
            (true, true) => Some(self.encode_genept(tape, params, &candidates, input.genept)),
            (true, false) => Some(self.encode_distinct(tape, params, &candidates, input.genept)),
        };
        let (mut candidate_changes, mut seen, mut cross) = (None, Vec::new(), Vec::new());
        if let (Some(enc), Some(observed)) = (&self.responses, knowledge.responses.as_ref()) {
            let cell_type = |r: usize| input.cell_type[set_of_row(r)];
            let changes: Vec<Option<&Vec<f64>>> = (0..rows * k).map(|i| observed.change(candidates[i], cell_type(i / k))).collect();
            seen = changes.iter().map(Option::is_some).collect();
            let x = response_rows(tape, changes.into_iter().map(|c| c.map(Cow::Borrowed)), self.cfg.genes);
            candidate_changes = Some(x);
            let responses = enc.candidate.apply(tape, params, x);
            cand_enc = Some(match cand_enc {
                Some(genept) => tape.add(genept, responses),
                None => responses,
            });
            cross = (0..rows).map(|r| observed.cross_cell_type(queries[r], cell_type(r))).collect();
            let x = response_rows(tape, cross.iter().map(|c| c.as_ref().map(Cow::Borrowed)), self.cfg.genes);
            let encoded = enc.query.apply(tape, params, x);
            query_enc = tape.add(query_enc, encoded);
        }
        if let Some(lin) = &self.similarity {
            // The response cosine reads the query rows' cross-cell-type changes made above.
            let responses = self.responses.as_ref().and(knowledge.responses.as_ref()).map(|o| (o, cross.as_slice()));
            let features = similarity_features(knowledge, responses, &queries, &candidates, k, |r| input.cell_type[set_of_row(r)]);
            let x = tape.constant(&[rows * k, features.len() / (rows * k)], features.into_iter().map(T::f).collect());
            let encoded = lin.apply(tape, params, x);
            cand_enc = Some(match cand_enc {
                Some(c) => tape.add(c, encoded),
                None => encoded,
            });
        }
        let candidates_enc = cand_enc.expect("a candidate encoding: GenePT, responses or both");
        let encoded = Encoded { query: query_enc, candidates: candidates_enc, candidate_changes };
        (Retrieval { rows, candidates, similarity, observed: seen }, encoded)
    }

    /// Predicted expression (and, for PT-RAG, the selection) for one batch.
    pub fn forward<T: Scalar>(&self, tape: &mut Tape<T>, params: &Params<T>, input: &ModelInput) -> Forward {
        let (n, g) = (input.sets * input.cells, self.cfg.genes);
        assert!(input.perturbation.len() == input.sets && input.batch.len() == n, "model input sizes");
        let control = input.control.on_tape(tape, n, g);
        let basal = self.basal.apply(tape, params, control);
        let set_of_cell: Vec<usize> = (0..n).map(|i| i / input.cells).collect();

        let (mut readout, mut selection_logits) = (None, None);
        let (x, selection, retrieval) = match &self.context {
            Context::None => {
                let pert = match &self.pert {
                    PertEncoder::OneHot { table, bias } => {
                        let table = tape.param(params, *table);
                        let per_set: Vec<usize> = input.perturbation.iter().map(|&p| p as usize).collect();
                        let pert = tape.gather(table, &per_set);
                        let bias = tape.param(params, *bias);
                        tape.add_bias(pert, bias)
                    }
                    PertEncoder::Genept(_) => self.encode_genept(tape, params, input.perturbation, input.genept),
                };
                let pert = tape.gather(pert, &set_of_cell);
                (tape.add(basal, pert), None, None)
            }
            Context::CrossAttention(attn) => {
                let (r, e) = self.retrieve(tape, params, input);
                (attn.forward(tape, params, basal, e.query, e.candidates, r.rows, self.cfg.top_k), None, Some(r))
            }
            Context::Selector(sel) => {
                let (r, e) = self.retrieve(tape, params, input);
                let (z, w, logits) = sel.forward(&self.cfg, tape, params, basal, e.query, e.candidates, r.rows, input.selection);
                readout = e.candidate_changes.and_then(|changes| self.response_readout(tape, params, input, &r, logits, changes));
                selection_logits = Some(logits);
                (z, Some(w), Some(r))
            }
        };

        let batch_table = tape.param(params, self.batch_table);
        let batch_ids: Vec<usize> = input.batch.iter().map(|&b| b as usize).collect();
        let batch = tape.gather(batch_table, &batch_ids);
        let x = tape.add(x, batch);
        let x = self.backbone.forward(&self.cfg, tape, params, x, input.sets, input.cells);
        let x = tape.add(x, basal);
        let mut out = self.head.apply(tape, params, x);
        if let Some(readout) = readout {
            out = tape.add(out, readout);
        }
        // Set (`set_output_anchor`) only for the options that add one.
        if !self.anchor.per_cell_type.is_empty() {
            let rows: Vec<T> =
                (0..input.sets).flat_map(|s| self.anchor.of(input.perturbation[s], input.cell_type[s]).iter().map(|&x| T::f(x))).collect();
            let per_set = tape.constant(&[input.sets, g], rows);
            let anchor = tape.gather(per_set, &set_of_cell);
            out = tape.add(out, anchor);
        }
        let pred = match self.cfg.output_anchor {
            OutputAnchor::Linear => {
                // The paired control cells centred on their set's mean: the predicted set's mean is
                // the anchor's (plus the correction) exactly, and its spread the controls'.
                let sums = tape.sum_groups(control, input.cells);
                let means = tape.scale(sums, -1.0 / input.cells as f64);
                let minus_mean = tape.gather(means, &set_of_cell);
                let centred = tape.add(control, minus_mean);
                tape.add(out, centred)
            }
            OutputAnchor::None | OutputAnchor::Shift => tape.relu(out),
        };
        Forward { pred, selection, selection_logits, retrieval }
    }

    /// The response readout `[N, G]` (see `ModelConfig::response_readout`) from the candidates'
    /// encoder input `[rows * K, G + 1]`, or none without it.
    fn response_readout<T: Scalar>(
        &self,
        tape: &mut Tape<T>,
        params: &Params<T>,
        input: &ModelInput,
        r: &Retrieval,
        logits: Var,
        candidate_changes: Var,
    ) -> Option<Var> {
        let gate = self.responses.as_ref()?.readout_gate?;
        let (k, g, n) = (self.cfg.top_k, self.cfg.genes, input.sets * input.cells);
        let cells_per_row = n / r.rows;
        // Each (cell, candidate)'s row among the candidates `[rows * K]`.
        let per_cell: Vec<usize> = (0..n * k).map(|i| (i / k / cells_per_row) * k + i % k).collect();
        let changes = tape.slice_cols(candidate_changes, 0, g);
        let changes = tape.gather(changes, &per_cell);
        // The include-exclude gap of every (cell, candidate), softmax over each cell's K; the
        // unobserved (zero changes) are kept out of it.
        let difference = tape.constant(&[2, 1], vec![T::f(-1.0), T::one()]);
        let gap = tape.matmul(logits, difference, false, false);
        let gap = tape.reshape(gap, &[n, k]);
        let mask = per_cell.iter().map(|&j| if r.observed[j] { T::zero() } else { T::f(-1e4) }).collect();
        let mask = tape.constant(&[n, k], mask);
        let gap = tape.add(gap, mask);
        let weights = tape.softmax(gap);
        let weights = tape.reshape(weights, &[n * k, 1]);
        let weighted = tape.scale_rows(changes, weights);
        let readout = tape.sum_groups(weighted, k);
        let gate = tape.param(params, gate);
        Some(tape.scale_cols(readout, gate))
    }
}

/// `knowledge` checked against `cfg` for the GenePT-based models (none for STATE): the table's
/// size, and for retrieval enough perturbations for K candidates plus the excluded query.
fn checked_knowledge(cfg: &ModelConfig, knowledge: Option<Knowledge>) -> Result<Option<Knowledge>> {
    if !cfg.kind.uses_genept() {
        return Ok(None);
    }
    let p = cfg.perturbations;
    let k = knowledge.ok_or_else(|| Error::invalid("model", format!("{} needs GenePT vectors", cfg.kind.label())))?;
    if k.dim != cfg.genept_dim || k.in_database.len() != p {
        return Err(Error::invalid("GenePT table", format!("expected {p} vectors of dimension {}", cfg.genept_dim)));
    }
    if cfg.kind.retrieves() && k.database_size() < cfg.top_k + 1 {
        let why = format!(
            "top-{} retrieval needs at least {} perturbations in the database; it has {}",
            cfg.top_k,
            cfg.top_k + 1,
            k.database_size()
        );
        return Err(Error::invalid("top-k", why));
    }
    Ok(Some(k))
}

/// The perturbation encoder: STATE's one-hot table, or Linear(E -> H) on the GenePT vector.
fn pert_encoder<T: Scalar>(cfg: &ModelConfig, knowledge: Option<&Knowledge>, params: &mut Params<T>, rng: &mut impl Rng) -> PertEncoder {
    let (h, p) = (cfg.hidden, cfg.perturbations);
    match knowledge {
        None => {
            // By default the one-hot codes start like an embedding, N(0, 1): every perturbation has a
            // distinct code of the same scale as the basal and batch terms from step 0. The reference's
            // U(+-1/sqrt(P)) codes are ~sqrt(P) times smaller and need the paper's long schedule to grow.
            let init = if cfg.reference_init { uniform_fan_in(rng, p * h, p) } else { normal(rng, p * h, 1.0) };
            let table = params.add("pert.weight_t", &[p, h], T::from_f32_slice(&init));
            let bias = params.add("pert.bias", &[h], T::from_f32_slice(&uniform_fan_in(rng, h, p)));
            PertEncoder::OneHot { table, bias }
        }
        Some(k) => {
            let lin = Linear::new(params, rng, "pert", k.dim, h, true);
            if !cfg.reference_init {
                // The same reasoning for GenePT: N(0, 1/rms norm) weights give encodings of unit scale
                // (PyTorch's default gives ~1/sqrt(3E) = 0.015 for unit-norm vectors).
                let sd = (1.0 / k.mean_squared_norm().sqrt()) as f32;
                params.entries[lin.weight.0].value = std::sync::Arc::new(T::from_f32_slice(&normal(rng, h * k.dim, sd)));
            }
            PertEncoder::Genept(lin)
        }
    }
}

/// Mean over sets of the per-set (half) energy distance between `pred` and `target`, both `[sets * cells, genes]`.
pub fn energy_loss<T: Scalar>(tape: &mut Tape<T>, pred: Var, target: Var, sets: usize, cells: usize, genes: usize) -> Var {
    let shape = EnergyShape { sets, cells_pred: cells, cells_obs: cells, genes };
    let per_set = tape.energy(pred, target, shape);
    tape.mean(per_set)
}
