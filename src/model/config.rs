//! What a model is: its kind, its options (the paper's and those beyond it) and its sizes.

use super::beyond::{OutputAnchor, REGISTRY};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

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
    /// Gumbel-Softmax temperature (with `tau_start`, the temperature of the last step).
    pub tau: f64,
    /// Beyond the paper, PT-RAG: the temperature anneals geometrically from this at the first
    /// training step to `tau` at the last (`tau_at`); `None`: `tau` throughout, as the paper.
    #[serde(default)]
    pub tau_start: Option<f64>,
    /// Beyond the paper, PT-RAG: the first this many training steps use the expected selection
    /// (each candidate weighted by its inclusion probability, a smooth gradient, no Gumbel noise)
    /// instead of the straight-through sample; 0: the sample from the first step, as the paper.
    #[serde(default)]
    pub soft_selection_steps: usize,
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
    /// Beyond the paper, any model: what the output adds to the head, per cell type
    /// (`Model::set_output_anchor`).
    #[serde(default)]
    pub output_anchor: OutputAnchor,
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
            tau_start: None,
            soft_selection_steps: 0,
            scorer_dropout: 0.1,
            self_exclusion: SelfExclusion::Always,
            per_cell_retrieval: false,
            candidate_context: CandidateContext::Genept,
            logit_norm: LogitNorm::GlobalStd,
            response_readout: false,
            output_anchor: OutputAnchor::None,
            similarity_features: false,
            genes,
            perturbations,
            batches,
            genept_dim: if kind.uses_genept() { genept_dim } else { 0 },
        }
    }

    /// The model's name in reports: the paper's name, and `+<suffix>` for each option beyond the
    /// paper that changes it, in the registry's order (`pt-rag+both`, `pt-rag+no-logit-norm`).
    pub fn variant_name(&self) -> String {
        let mut name = self.kind.name().to_string();
        for suffix in REGISTRY.iter().filter_map(|o| (o.suffix)(self)) {
            name += &format!("+{suffix}");
        }
        name
    }

    /// The Gumbel-Softmax temperature of training step `step` of `steps`: `tau`, or with `tau_start`
    /// `tau_start * (tau / tau_start)^(step / (steps - 1))`.
    pub fn tau_at(&self, step: usize, steps: usize) -> f64 {
        match self.tau_start {
            None => self.tau,
            Some(start) => {
                let progress = if steps > 1 { (step.min(steps - 1)) as f64 / (steps - 1) as f64 } else { 1.0 };
                start * (self.tau / start).powf(progress)
            }
        }
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
        for option in REGISTRY {
            option.validate(self)?;
        }
        if !(0.0..1.0).contains(&self.scorer_dropout) {
            return Err(Error::invalid("scorer dropout", format!("must be in [0, 1), got {}", self.scorer_dropout)));
        }
        Ok(())
    }
}

/// Upgrades a model configuration saved by an earlier version (a run record's or a checkpoint's
/// `model` table, as JSON) to this one, in place. Before `output_anchor` the anchor was three
/// booleans: `shift_output` is now `output_anchor = "shift"`; `anchor_output` and
/// `residual_output` were retired (docs/results.md, "Retired options"), and a run that used one is
/// refused with the last commit that can read it.
pub fn upgrade_saved_model(model: &mut serde_json::Value) -> Result<()> {
    let Some(table) = model.as_object_mut() else { return Ok(()) };
    for retired in ["anchor_output", "residual_output"] {
        if table.remove(retired).and_then(|v| v.as_bool()) == Some(true) {
            return Err(Error::invalid(
                format!("--{}", retired.replace('_', "-")),
                "was retired (docs/results.md, \"Retired options\"); this run used it: read it with ptrag-engine at commit 156861c",
            ));
        }
    }
    if let Some(shift) = table.remove("shift_output") {
        if shift.as_bool() == Some(true) {
            table.insert("output_anchor".into(), "shift".into());
        }
    }
    Ok(())
}
