//! What a model is: its kind, its options (the paper's and those beyond it) and its sizes.

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
    /// Beyond the paper, any model: the output head predicts the difference from the mean of the
    /// set's cell type's control cells (`Model::set_output_anchor`), and starts at zero, so an
    /// untrained model predicts the control mean (plus the readout, if any).
    #[serde(default)]
    pub anchor_output: bool,
    /// Beyond the paper, any model: the prediction is the paired control cell plus its cell type's
    /// mean change over the training perturbations (`Model::set_output_anchor`) plus the output
    /// head, which starts at zero: an untrained model is the `training-mean` baseline, cell for cell.
    #[serde(default)]
    pub residual_output: bool,
    /// Beyond the paper, any model: the output adds its cell type's mean change over the training
    /// perturbations (`Model::set_output_anchor`); the head keeps its initialisation.
    #[serde(default)]
    pub shift_output: bool,
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
            anchor_output: false,
            residual_output: false,
            shift_output: false,
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
        if self.residual_output {
            name += "+residual";
        }
        if self.shift_output {
            name += "+shift";
        }
        if self.tau_start.is_some() {
            name += "+tau-anneal";
        }
        if self.soft_selection_steps > 0 {
            name += "+soft-warmup";
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
        if let Some(t) = self.tau_start {
            if !(t > 0.0 && t.is_finite()) || self.kind != ModelKind::PtRag {
                return Err(Error::invalid(
                    "tau-start",
                    format!("a positive temperature, for pt-rag only; got {t} for {}", self.kind.name()),
                ));
            }
        }
        if self.soft_selection_steps > 0 && self.kind != ModelKind::PtRag {
            return Err(Error::invalid("soft-selection-steps", format!("applies to pt-rag, not {}", self.kind.name())));
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
        if [self.anchor_output, self.residual_output, self.shift_output].iter().filter(|&&on| on).count() > 1 {
            return Err(Error::invalid(
                "output",
                "--anchor-output, --residual-output and --shift-output are different anchors; choose one",
            ));
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
