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
pub mod context;
pub mod knowledge;
pub mod layers;

use crate::cpu::elementwise::DropoutMask;
use crate::cpu::energy::EnergyShape;
use crate::cuda::tensor::RowTable;
use crate::data::responses::ObservedResponses;
use crate::real::Real;
use crate::tape::{ParamId, Params, Tape, Var};
use crate::{Error, Result};
use backbone::Backbone;
use context::{CrossAttention, Selector};
use knowledge::Knowledge;
use layers::{normal, uniform_fan_in, Linear};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    State,
    StateGenept,
    VanillaRag,
    PtRag,
}

impl ModelKind {
    /// The four models, in the paper's order.
    pub const ALL: [ModelKind; 4] = [ModelKind::State, ModelKind::StateGenept, ModelKind::VanillaRag, ModelKind::PtRag];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::State => "state",
            ModelKind::StateGenept => "state-genept",
            ModelKind::VanillaRag => "vanilla-rag",
            ModelKind::PtRag => "pt-rag",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            ModelKind::State => "STATE",
            ModelKind::StateGenept => "STATE+GenePT",
            ModelKind::VanillaRag => "Vanilla RAG",
            ModelKind::PtRag => "PT-RAG",
        }
    }
    pub fn uses_genept(self) -> bool {
        self != ModelKind::State
    }
    pub fn retrieves(self) -> bool {
        matches!(self, ModelKind::VanillaRag | ModelKind::PtRag)
    }
}

/// What the retrieval models' context module sees of the query and of each retrieved candidate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CandidateContext {
    /// The paper: the GenePT vectors of the query and of the candidates, encoded.
    #[default]
    Genept,
    /// Observed responses (beyond the paper): each candidate's mean change in the set's cell type
    /// when it is a training condition there, instead of its GenePT vector; the query's GenePT
    /// encoding plus its mean change in the other cell types. Each is `Linear(G + 1 -> H)` of the
    /// change and an observed indicator (a zero change and indicator when nothing was observed).
    Responses,
    /// The candidates' GenePT and response encodings summed; the query as in `responses`.
    Both,
}

impl CandidateContext {
    pub fn name(self) -> &'static str {
        match self {
            CandidateContext::Genept => "genept",
            CandidateContext::Responses => "responses",
            CandidateContext::Both => "both",
        }
    }
}

/// How PT-RAG's (exclude, include) logits are scaled before the Gumbel-Softmax.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogitNorm {
    /// Divided by their one standard deviation over the batch (the paper's code). This caps every
    /// include-exclude gap: with all candidates pushed one way the logits are +-s, normalised +-1,
    /// so no candidate's inclusion probability falls below sigmoid(-2) = 0.12 (3.8 of 32).
    #[default]
    GlobalStd,
    /// Used as they are.
    None,
}

/// Which perturbation a query may not retrieve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelfExclusion {
    /// Every query excludes itself (the paper's text; our default).
    Always,
    /// The reference code's indexing bug: in training only the first set of a batch excludes its
    /// own perturbation, so the others retrieve themselves first; evaluation excludes correctly.
    FirstSetInTraining,
}

/// Architecture and retrieval settings; `ModelConfig::paper` gives the paper's (Table 7's sizes; docs/design.md, "The four models").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// SwiGLU inner width.
    pub mlp: usize,
    pub rms_eps: f64,
    /// Causal attention over the set (reference-compatibility); the default is bidirectional.
    pub causal: bool,
    /// Rotary positions in the backbone's attention with this base (reference: 10000); none by default.
    pub rope_theta: Option<f64>,
    /// Keep the backbone and the output head at their initialisation (the reference trained only
    /// the encoders and the selection module).
    pub frozen_backbone: bool,
    /// PyTorch's `nn.Linear` initialisation for the perturbation encoder, as the reference (default:
    /// codes of unit scale, see `Model::new`).
    pub reference_init: bool,
    /// Candidates retrieved per query (K).
    pub top_k: usize,
    /// Gumbel-Softmax temperature.
    pub tau: f64,
    /// Dropout in PT-RAG's scorer MLP (training only).
    pub scorer_dropout: f64,
    pub self_exclusion: SelfExclusion,
    /// Retrieve and encode candidates once per cell (the reference's formulation) instead of once per set.
    pub per_cell_retrieval: bool,
    /// What the context module sees of the query and the candidates (retrieval models).
    #[serde(default)]
    pub candidate_context: CandidateContext,
    /// PT-RAG's logit scaling before the Gumbel-Softmax.
    #[serde(default)]
    pub logit_norm: LogitNorm,
    /// PT-RAG with observed responses (beyond the paper): the prediction adds, per gene and gated,
    /// the mean of the candidates' observed changes in the set's cell type weighted by the softmax
    /// over candidates of their include-exclude logit gap (unobserved candidates weigh nothing).
    #[serde(default)]
    pub response_readout: bool,
    /// Beyond the paper, any model: the output head predicts the difference from the mean of the
    /// set's cell type's control cells (`Model::set_output_anchor`), and starts at zero, so an
    /// untrained model predicts the control mean (plus the readout, if any).
    #[serde(default)]
    pub anchor_output: bool,
    /// Beyond the paper, the retrieval models: every candidate's encoding adds `Linear(F -> H)` of
    /// scalar features standardised over its query's K (`similarity_features`): the GenePT cosine
    /// to the query and, with observed responses, the cosine of the candidate's change in the set's
    /// cell type to the query's cross-cell-type change. A scorer on concatenated encodings cannot
    /// form these dot products itself.
    #[serde(default)]
    pub similarity_features: bool,
    /// From the data: genes, perturbations (control included), batch groups, GenePT width (0 for STATE).
    pub genes: usize,
    pub perturbations: usize,
    pub batches: usize,
    pub genept_dim: usize,
}

impl ModelConfig {
    pub fn paper(kind: ModelKind, genes: usize, perturbations: usize, batches: usize, genept_dim: usize) -> Self {
        ModelConfig {
            kind,
            hidden: 128,
            layers: 8,
            heads: 12,
            head_dim: 58,
            mlp: 2784,
            rms_eps: 1e-6,
            causal: false,
            rope_theta: None,
            frozen_backbone: false,
            reference_init: false,
            top_k: 32,
            tau: 0.5,
            scorer_dropout: 0.1,
            self_exclusion: SelfExclusion::Always,
            per_cell_retrieval: false,
            candidate_context: CandidateContext::Genept,
            logit_norm: LogitNorm::GlobalStd,
            response_readout: false,
            anchor_output: false,
            similarity_features: false,
            genes,
            perturbations,
            batches,
            genept_dim: if kind.uses_genept() { genept_dim } else { 0 },
        }
    }

    /// The model's name in reports: the paper's name, and `+<option>` for each option beyond the
    /// paper that changes it (`pt-rag+both`, `pt-rag+no-logit-norm`).
    pub fn variant_name(&self) -> String {
        let mut name = self.kind.name().to_string();
        if self.candidate_context != CandidateContext::Genept {
            name += &format!("+{}", self.candidate_context.name());
        }
        if self.kind == ModelKind::PtRag && self.logit_norm == LogitNorm::None {
            name += "+no-logit-norm";
        }
        if self.response_readout {
            name += "+readout";
        }
        if self.anchor_output {
            name += "+anchored";
        }
        if self.similarity_features {
            name += "+similarity";
        }
        name
    }

    /// Checks sizes and options that are not caught by the type system.
    pub fn validate(&self) -> Result<()> {
        let sizes = [self.hidden, self.layers, self.heads, self.head_dim, self.mlp];
        if sizes.contains(&0) {
            return Err(Error::invalid("model size", "hidden, layers, heads, head-dim and mlp must be at least 1"));
        }
        if self.rope_theta.is_some() && !self.head_dim.is_multiple_of(2) {
            return Err(Error::invalid("rotary positions", format!("need an even head dimension, have {}", self.head_dim)));
        }
        if self.kind.retrieves() && self.top_k == 0 {
            return Err(Error::invalid("top-k", "retrieval needs at least one candidate (top-k >= 1)"));
        }
        if !(self.tau > 0.0 && self.tau.is_finite()) {
            return Err(Error::invalid("tau", format!("the Gumbel-Softmax temperature must be positive, got {}", self.tau)));
        }
        if self.candidate_context != CandidateContext::Genept && !self.kind.retrieves() {
            return Err(Error::invalid("candidate context", format!("applies to the retrieval models, not {}", self.kind.name())));
        }
        if self.candidate_context != CandidateContext::Genept && self.self_exclusion == SelfExclusion::FirstSetInTraining {
            // A query retrieving itself would be handed its own observed change: the training label.
            return Err(Error::invalid("candidate context", "observed responses cannot be combined with the self-retrieval bug"));
        }
        if self.response_readout && (self.kind != ModelKind::PtRag || self.candidate_context == CandidateContext::Genept) {
            return Err(Error::invalid("response readout", "applies to pt-rag with --candidate-context responses or both"));
        }
        if self.similarity_features && !self.kind.retrieves() {
            return Err(Error::invalid("similarity features", format!("apply to the retrieval models, not {}", self.kind.name())));
        }
        if !(0.0..1.0).contains(&self.scorer_dropout) {
            return Err(Error::invalid("scorer dropout", format!("must be in [0, 1), got {}", self.scorer_dropout)));
        }
        Ok(())
    }
}

/// The random parts of PT-RAG's forward pass, drawn by the caller so that they can be fixed.
#[derive(Clone, Debug)]
pub struct Noise {
    /// The counter stream of the `[cells, K, 2]` standard Gumbel samples for (exclude, include),
    /// drawn where the tape runs (`Tape::gumbel_noise`).
    pub gumbel_key: u64,
    /// The scorer's dropout over its `[cells, K, hidden]` activations; none = no dropout.
    pub dropout: Option<DropoutMask>,
}

/// How PT-RAG turns its scores into candidate weights in a forward pass.
#[derive(Clone, Copy, Debug)]
pub enum Selection<'a> {
    /// Straight-through Gumbel-Softmax with this noise (and the scorer's dropout, if any): training.
    Sampled(&'a Noise),
    /// Include iff the include logit is larger: exactly 0/1 and deterministic.
    Hard,
    /// The probability that a sample includes the candidate, `softmax(logits)[include]`: the
    /// expectation of the sampled weights, deterministic.
    Expected,
}

impl<'a> Selection<'a> {
    /// Sampled when there is noise, else hard.
    pub fn from_noise(noise: Option<&'a Noise>) -> Self {
        noise.map_or(Selection::Hard, Selection::Sampled)
    }
}

/// Expression of a batch's cells: values on the host, or rows of the dataset's expression matrix
/// kept on the GPU (which a GPU tape gathers there).
#[derive(Clone, Copy)]
pub enum Cells<'a> {
    /// `[cells, genes]`
    Values(&'a [f32]),
    Rows {
        table: &'a RowTable,
        rows: &'a [u32],
    },
}

impl Cells<'_> {
    /// The cells as data on `tape`, `[cells, genes]`.
    pub fn on_tape<T: Real>(self, tape: &mut Tape<T>, cells: usize, genes: usize) -> Var {
        match self {
            Cells::Values(v) => {
                assert_eq!(v.len(), cells * genes, "expected {cells} x {genes} expression values");
                tape.constant(&[cells, genes], T::from_f32_slice(v))
            }
            Cells::Rows { table, rows } => {
                assert!(rows.len() == cells && table.cols() == genes, "expected {cells} rows of {genes} genes");
                tape.table_rows(table, rows)
            }
        }
    }
}

/// One batch of model inputs: `sets` sets of `cells` cells.
pub struct ModelInput<'a> {
    pub sets: usize,
    pub cells: usize,
    /// `[sets * cells, genes]`: the paired control cell of every cell.
    pub control: Cells<'a>,
    /// `[sets]`
    pub perturbation: &'a [u32],
    /// `[sets]`: the cell type of each set (whose observed responses a candidate carries).
    pub cell_type: &'a [u32],
    /// `[sets * cells]`
    pub batch: &'a [u32],
    /// A training forward pass (the reference's self-exclusion bug acts only there).
    pub training: bool,
    /// PT-RAG's selection (ignored by the other models).
    pub selection: Selection<'a>,
    /// The GenePT table kept on the GPU, whose rows a GPU tape gathers there; none: the model's
    /// host copy, uploaded row by row.
    pub genept: Option<&'a RowTable>,
}

impl<'a> ModelInput<'a> {
    pub fn from_batch(b: &'a crate::data::sampler::Batch, training: bool, selection: Selection<'a>) -> Self {
        ModelInput {
            sets: b.sets,
            cells: b.cells,
            control: Cells::Values(&b.control),
            perturbation: &b.perturbation,
            cell_type: &b.cell_type,
            batch: &b.batch,
            training,
            selection,
            genept: None,
        }
    }
}

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
    /// `[cell types, G]`: what `anchor_output` adds to the head (zeros until `set_output_anchor`).
    anchor: Vec<f32>,
    knowledge: Option<Knowledge>,
}

/// `Linear(G + 1 -> H)` of an observed mean change and its observed indicator: one for the
/// candidates' changes in the set's cell type, one for the query's in the other cell types.
struct ResponseEncoders {
    candidate: Linear,
    query: Linear,
    /// `[G]`, 1 at the start: the response readout's per-gene gate (`response_readout` only).
    readout_gate: Option<ParamId>,
}

impl Model {
    /// Registers the parameters (initialised from `rng`) and returns the model. GenePT-based models
    /// need `knowledge`; retrieval needs more than `top_k` perturbations in its database.
    pub fn new<T: Real>(cfg: &ModelConfig, knowledge: Option<Knowledge>, params: &mut Params<T>, rng: &mut impl Rng) -> Result<Self> {
        cfg.validate()?;
        let (g, h, p) = (cfg.genes, cfg.hidden, cfg.perturbations);
        let knowledge = if cfg.kind.uses_genept() {
            let k = knowledge.ok_or_else(|| Error::invalid("model", format!("{} needs GenePT vectors", cfg.kind.label())))?;
            if k.dim != cfg.genept_dim || k.in_database.len() != p {
                return Err(Error::invalid("GenePT table", format!("expected {p} vectors of dimension {}", cfg.genept_dim)));
            }
            // K candidates plus the query itself, which is excluded.
            if cfg.kind.retrieves() && k.database_size() < cfg.top_k + 1 {
                return Err(Error::invalid(
                    "top-k",
                    format!(
                        "top-{} retrieval needs at least {} perturbations in the database; it has {}",
                        cfg.top_k,
                        cfg.top_k + 1,
                        k.database_size()
                    ),
                ));
            }
            Some(k)
        } else {
            None
        };
        let basal = Linear::new(params, rng, "basal", g, h, true);
        let pert = match &knowledge {
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
        };
        let batch_table = params.add("batch.weight", &[cfg.batches, h], T::from_f32_slice(&normal(rng, cfg.batches * h, 1.0)));
        let context = match cfg.kind {
            ModelKind::State | ModelKind::StateGenept => Context::None,
            ModelKind::VanillaRag => Context::CrossAttention(CrossAttention::new(params, rng, h)),
            ModelKind::PtRag => Context::Selector(Selector::new(params, rng, h)),
        };
        let backbone = Backbone::new(cfg, params, rng);
        let head = Linear::new(params, rng, "head", h, g, true);
        // Registered last, so that every other parameter starts as in the paper's models.
        let responses = match (cfg.candidate_context, &knowledge) {
            (CandidateContext::Genept, _) => None,
            (_, Some(Knowledge { responses: Some(observed), .. })) => {
                // Encodings of unit scale for a change of typical norm, as the GenePT encoder's.
                let sd = (1.0 / observed.rms_norm()) as f32;
                let mut encoder = |name: &str| {
                    let lin = Linear::new(params, rng, name, g + 1, h, true);
                    params.entries[lin.weight.0].value = std::sync::Arc::new(T::from_f32_slice(&normal(rng, h * (g + 1), sd)));
                    lin
                };
                let (candidate, query) = (encoder("responses.candidate"), encoder("responses.query"));
                let readout_gate = cfg.response_readout.then(|| params.add("responses.readout_gate", &[g], vec![T::one(); g]));
                Some(ResponseEncoders { candidate, query, readout_gate })
            }
            _ => {
                return Err(Error::invalid(
                    "candidate context",
                    "observed responses need the fold's response table (`Knowledge::with_responses`)",
                ))
            }
        };
        let similarity = cfg.similarity_features.then(|| {
            let features = if responses.is_some() { 2 } else { 1 };
            Linear::new(params, rng, "similarity", features, h, false)
        });
        if cfg.frozen_backbone {
            for p in params.entries.iter_mut() {
                if p.name.starts_with("layers.") || p.name == "final_norm" || p.name.starts_with("head.") {
                    p.trainable = false;
                }
            }
        }
        if cfg.anchor_output {
            for id in [Some(head.weight), head.bias].into_iter().flatten() {
                let n = params.entries[id.0].value.len();
                params.entries[id.0].value = std::sync::Arc::new(vec![T::zero(); n]);
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
            anchor: Vec::new(),
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
    pub fn set_output_bias<T: Real>(&self, params: &mut Params<T>, mean: &[f32]) {
        let bias = &mut params.entries[self.head.bias.expect("the head has a bias").0];
        assert_eq!(bias.value.len(), mean.len(), "output bias length");
        bias.value = std::sync::Arc::new(T::from_f32_slice(mean));
    }

    /// The per-cell-type means `[cell types][G]` that `anchor_output` adds to the head's output
    /// (the fold's control pools: known in the protocol, as to the baselines).
    pub fn set_output_anchor(&mut self, means: &[Vec<f64>]) {
        self.anchor = means.iter().flat_map(|m| m.iter().map(|&x| x as f32)).collect();
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
    fn encode_genept<T: Real>(&self, tape: &mut Tape<T>, params: &Params<T>, perts: &[u32], resident: Option<&RowTable>) -> Var {
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
    fn encode_distinct<T: Real>(&self, tape: &mut Tape<T>, params: &Params<T>, perts: &[u32], resident: Option<&RowTable>) -> Var {
        let mut distinct = perts.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let encoded = self.encode_genept(tape, params, &distinct, resident);
        let rows: Vec<usize> = perts.iter().map(|p| distinct.binary_search(p).expect("present")).collect();
        tape.gather(encoded, &rows)
    }

    /// Stage one for every query row, and the encodings of queries `[rows, H]` and candidates `[rows * K, H]`.
    fn retrieve<T: Real>(&self, tape: &mut Tape<T>, params: &Params<T>, input: &ModelInput) -> (Retrieval, Encoded) {
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
        let (mut candidate_changes, mut seen) = (None, Vec::new());
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
            let query_rows = (0..rows).map(|r| observed.cross_cell_type(queries[r], cell_type(r)).map(Cow::Owned));
            let x = response_rows(tape, query_rows, self.cfg.genes);
            let cross = enc.query.apply(tape, params, x);
            query_enc = tape.add(query_enc, cross);
        }
        if let Some(lin) = &self.similarity {
            let observed = self.responses.as_ref().and(knowledge.responses.as_ref());
            let features = similarity_features(knowledge, observed, &queries, &candidates, k, |r| input.cell_type[set_of_row(r)]);
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
    pub fn forward<T: Real>(&self, tape: &mut Tape<T>, params: &Params<T>, input: &ModelInput) -> Forward {
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
        if self.cfg.anchor_output && !self.anchor.is_empty() {
            let types = self.anchor.len() / g;
            let table = tape.constant(&[types, g], T::from_f32_slice(&self.anchor));
            let per_cell: Vec<usize> = (0..n).map(|i| input.cell_type[i / input.cells] as usize).collect();
            let anchor = tape.gather(table, &per_cell);
            out = tape.add(out, anchor);
        }
        Forward { pred: tape.relu(out), selection, selection_logits, retrieval }
    }

    /// The response readout `[N, G]` (see `ModelConfig::response_readout`) from the candidates'
    /// encoder input `[rows * K, G + 1]`, or none without it.
    fn response_readout<T: Real>(
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

/// Observed changes as an encoder's input `[rows, genes + 1]`: each change and a 1, or zeros for
/// one never observed.
fn response_rows<'c, T: Real>(tape: &mut Tape<T>, changes: impl Iterator<Item = Option<Cow<'c, Vec<f64>>>>, genes: usize) -> Var {
    let mut values = Vec::new();
    let mut rows = 0;
    for change in changes {
        match change {
            Some(v) => values.extend(v.iter().map(|&x| T::f(x)).chain([T::one()])),
            None => values.extend(std::iter::repeat_n(T::zero(), genes + 1)),
        }
        rows += 1;
    }
    tape.constant(&[rows, genes + 1], values)
}

/// The similarity features `[rows * K, F]` of every query row's K candidates (see
/// `ModelConfig::similarity_features`), each standardised over the row's K (over the observed
/// candidates for the response cosine; 0 for the unobserved and for a row without spread).
fn similarity_features(
    knowledge: &Knowledge,
    observed: Option<&ObservedResponses>,
    queries: &[u32],
    candidates: &[u32],
    k: usize,
    cell_type: impl Fn(usize) -> u32,
) -> Vec<f64> {
    let features = if observed.is_some() { 2 } else { 1 };
    let mut out = vec![0.0; candidates.len() * features];
    for (r, &query) in queries.iter().enumerate() {
        let row = r * k..(r + 1) * k;
        // In f64 from the vectors (retrieval's f32 similarities would carry their rounding, which the
        // standardisation magnifies, into the features).
        let vector =
            |p: u32| -> Vec<f64> { knowledge.vectors[p as usize * knowledge.dim..][..knowledge.dim].iter().map(|&v| v as f64).collect() };
        let q = vector(query);
        let cosine: Vec<Option<f64>> = candidates[row.clone()].iter().map(|&c| Some(cosine_of(&q, &vector(c)))).collect();
        let mut columns = vec![cosine];
        if let Some(observed) = observed {
            let cross = observed.cross_cell_type(query, cell_type(r));
            let response = |c: u32| Some(cosine_of(cross.as_ref()?, observed.change(c, cell_type(r))?));
            columns.push(candidates[row.clone()].iter().map(|&c| response(c)).collect());
        }
        for (f, column) in columns.iter().enumerate() {
            for (j, z) in standardised(column).into_iter().enumerate() {
                out[(row.start + j) * features + f] = z;
            }
        }
    }
    out
}

fn cosine_of(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norms = (a.iter().map(|x| x * x).sum::<f64>() * b.iter().map(|x| x * x).sum::<f64>()).sqrt();
    if norms > 0.0 {
        dot / norms
    } else {
        0.0
    }
}

/// `(x - mean) / sd` over the present values (sd with ddof 0, floored at 1e-6), 0 for the absent.
fn standardised(values: &[Option<f64>]) -> Vec<f64> {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    if present.is_empty() {
        return vec![0.0; values.len()];
    }
    let mean = present.iter().sum::<f64>() / present.len() as f64;
    let sd = (present.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / present.len() as f64).sqrt().max(1e-6);
    values.iter().map(|v| v.map_or(0.0, |x| (x - mean) / sd)).collect()
}

/// Mean over sets of the per-set (half) energy distance between `pred` and `target`, both `[sets * cells, genes]`.
pub fn energy_loss<T: Real>(tape: &mut Tape<T>, pred: Var, target: Var, sets: usize, cells: usize, genes: usize) -> Var {
    let shape = EnergyShape { sets, cells_pred: cells, cells_obs: cells, genes };
    let per_set = tape.energy(pred, target, shape);
    tape.mean(per_set)
}
