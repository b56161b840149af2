//! The model options beyond the paper, declared once.
//!
//! Each entry of `beyond_the_paper!` below is one option: its flag and help (the doc comment and
//! `#[arg]`), the models it applies to, how it sets the `ModelConfig` field that holds it, the
//! `+suffix` it adds to the variant's name when it departs from the paper, and the checks of its
//! value. From that one list come the flags of `train` and `reproduce` (`BeyondPaper`, flattened
//! into `TrainOptions`), their TOML keys, the refusal of an option for a model it does not apply
//! to, `ModelConfig::variant_name` and `ModelConfig::validate`'s part for them, and the variants
//! that `reproduce` trains: every option here makes a variant, for every model it applies to.
//! How to add one: docs/architecture.md, "How to add a model option".

use super::config::{CandidateContext, LogitNorm, ModelConfig, ModelKind, SelfExclusion};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which models an option beyond the paper applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    AnyModel,
    Retrieval,
    PtRag,
}

impl Applies {
    pub fn to(self, kind: ModelKind) -> bool {
        match self {
            Applies::AnyModel => true,
            Applies::Retrieval => kind.retrieves(),
            Applies::PtRag => kind == ModelKind::PtRag,
        }
    }
    pub fn models(self) -> &'static str {
        match self {
            Applies::AnyModel => "every model",
            Applies::Retrieval => "vanilla-rag and pt-rag",
            Applies::PtRag => "pt-rag",
        }
    }
}

/// What the model's output adds to its head, per cell type (`Model::set_output_anchor`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OutputAnchor {
    /// Nothing: the head's output is the prediction (the paper).
    #[default]
    None,
    /// The cell type's mean change over its training perturbations (known in the protocol, as to
    /// the baselines); the head keeps its initialisation.
    Shift,
    /// The stacked model: the paired control cells centred on their set's mean, plus the cell
    /// type's control mean, plus the `linear` baseline's predicted change for the condition (a
    /// ridge per cell type; cross-fitted for training conditions); the head and the readout start
    /// at zero and no ReLU follows, so that at step 0 the model's mean change is `linear`'s.
    Linear,
}

/// One registered option, as the rest of the engine sees it.
pub struct BeyondOption {
    /// The field in `BeyondPaper` and `ModelConfig` (`candidate_context`; the flag is `flag_name`).
    pub field: &'static str,
    pub applies: Applies,
    /// The `+suffix` of the variant name when the model's configuration departs from the paper
    /// in this option; `None` at the paper's value.
    pub suffix: fn(&ModelConfig) -> Option<String>,
    /// The value's own checks (beyond which models it applies to), given a departing configuration.
    pub check: fn(&ModelConfig) -> Result<()>,
    /// Flags that set a value away from the paper's, with what that needs (the readout needs
    /// observed responses): `tests/cli.rs` runs each through `reproduce`.
    pub example: &'static [&'static str],
}

macro_rules! beyond_the_paper {
    ($(
        $(#[doc = $doc:literal])*
        #[arg($($arg:tt)*)]
        $field:ident: $ty:ty,
        applies $applies:expr,
        set |$sm:ident, $sv:ident| $set:expr,
        suffix |$xm:ident| $suffix:expr,
        check |$cm:ident| $check:expr,
        example [$($example:literal),*];
    )*) => {
        /// The options beyond the paper as flags and TOML keys; unset means the paper's value.
        #[derive(clap::Args, Clone, Debug, Default, PartialEq, Deserialize)]
        #[serde(rename_all = "kebab-case", deny_unknown_fields)]
        #[command(next_help_heading = "Beyond the paper (docs/results.md says what each did)")]
        pub struct BeyondPaper {
            $( $(#[doc = $doc])* #[arg($($arg)*)] pub $field: Option<$ty>, )*
        }

        /// Every option beyond the paper, in the order of the variant name's suffixes.
        pub const REGISTRY: &[BeyondOption] = &[$(
            BeyondOption {
                field: stringify!($field),
                applies: $applies,
                suffix: |$xm: &ModelConfig| -> Option<String> { $suffix },
                check: |$cm: &ModelConfig| -> Result<()> { $check },
                example: &[$($example),*],
            },
        )*];

        impl BeyondPaper {
            /// The registry entries of the options that are set.
            pub fn set(&self) -> Vec<&'static BeyondOption> {
                let mut set = Vec::new();
                let mut entries = REGISTRY.iter();
                $( let entry = entries.next().expect("one entry per field"); if self.$field.is_some() { set.push(entry); } )*
                set
            }
            /// These options, each taken from `file` where unset here.
            pub fn or(self, file: BeyondPaper) -> BeyondPaper {
                BeyondPaper { $( $field: self.$field.or(file.$field), )* }
            }
            /// Only the options that apply to `kind`.
            pub fn for_model(&self, kind: ModelKind) -> BeyondPaper {
                let mut kept = self.clone();
                let mut entries = REGISTRY.iter();
                $( if !entries.next().expect("one entry per field").applies.to(kind) { kept.$field = None; } )*
                kept
            }
            /// Writes the options that are set into `model`.
            pub fn apply(&self, model: &mut ModelConfig) {
                $( if let Some($sv) = self.$field.clone() { let $sm = &mut *model; $set; } )*
            }
        }
    };
}

beyond_the_paper! {
    /// What the retrieval models see of the query and the candidates: `genept` (the paper),
    /// `responses` (the candidates' observed mean changes in the set's cell type, and the query's
    /// in the other cell types) or `both` [default: genept]
    #[arg(long, value_enum)]
    candidate_context: CandidateContext,
    applies Applies::Retrieval,
    set |m, v| m.candidate_context = v,
    suffix |m| (m.candidate_context != CandidateContext::Genept).then(|| m.candidate_context.name().to_string()),
    check |m| if m.self_exclusion == SelfExclusion::FirstSetInTraining {
        // A query retrieving itself would be handed its own observed change: the training label.
        Err(Error::invalid("candidate context", "observed responses cannot be combined with the self-retrieval bug"))
    } else {
        Ok(())
    },
    example ["--candidate-context", "both"];

    /// PT-RAG's logit scaling: `global-std` (the paper's code) or `none` [default: global-std]
    #[arg(long, value_enum)]
    logit_norm: LogitNorm,
    applies Applies::PtRag,
    set |m, v| m.logit_norm = v,
    suffix |m| (m.logit_norm == LogitNorm::None).then(|| "no-logit-norm".to_string()),
    check |_m| Ok(()),
    example ["--logit-norm", "none"];

    /// PT-RAG with `--candidate-context responses|both`: add to the prediction the candidates'
    /// observed changes, weighted by the softmax of their include-exclude logit gap [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    response_readout: bool,
    applies Applies::PtRag,
    set |m, v| m.response_readout = v,
    suffix |m| m.response_readout.then(|| "readout".to_string()),
    check |m| if m.candidate_context == CandidateContext::Genept {
        Err(Error::invalid("response readout", "applies to pt-rag with --candidate-context responses or both"))
    } else {
        Ok(())
    },
    example ["--candidate-context", "responses", "--response-readout"];

    /// The retrieval models: each candidate's encoding adds a learned map of its GenePT cosine to
    /// the query and (with observed responses) of the cosine of its change to the query's
    /// cross-cell-type change, standardised over the K [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    similarity_features: bool,
    applies Applies::Retrieval,
    set |m, v| m.similarity_features = v,
    suffix |m| m.similarity_features.then(|| "similarity".to_string()),
    check |_m| Ok(()),
    example ["--similarity-features"];

    /// Any model: what the output adds to the head: `none` (the paper), `shift` (the cell type's
    /// mean change over its training perturbations) or `linear` (the stacked model: centred
    /// control cells plus the `linear` baseline's predicted change, the head a correction starting
    /// at zero, step 0 a candidate for early stopping) [default: none]
    #[arg(long, value_enum)]
    output_anchor: OutputAnchor,
    applies Applies::AnyModel,
    set |m, v| m.output_anchor = v,
    suffix |m| match m.output_anchor {
        OutputAnchor::None => None,
        OutputAnchor::Shift => Some("shift".to_string()),
        OutputAnchor::Linear => Some("linear".to_string()),
    },
    check |_m| Ok(()),
    example ["--output-anchor", "shift"];

    /// PT-RAG: anneal the Gumbel-Softmax temperature geometrically from this at the first step to
    /// --tau at the last [default: none, --tau throughout]
    #[arg(long)]
    tau_start: f64,
    applies Applies::PtRag,
    set |m, v| m.tau_start = Some(v),
    suffix |m| m.tau_start.map(|_| "tau-anneal".to_string()),
    check |m| match m.tau_start {
        Some(t) if !(t > 0.0 && t.is_finite()) => Err(Error::invalid("tau-start", format!("a positive temperature, got {t}"))),
        _ => Ok(()),
    },
    example ["--tau-start", "2"];

    /// PT-RAG: the first N training steps use the expected selection (inclusion probabilities as
    /// weights) instead of the straight-through Gumbel sample [default: 0]
    #[arg(long)]
    soft_selection_steps: usize,
    applies Applies::PtRag,
    set |m, v| m.soft_selection_steps = v,
    suffix |m| (m.soft_selection_steps > 0).then(|| "soft-warmup".to_string()),
    check |_m| Ok(()),
    example ["--soft-selection-steps", "1"];
}

impl BeyondOption {
    /// The TOML key of run options: `candidate-context`.
    pub fn key(&self) -> String {
        self.field.replace('_', "-")
    }
    /// The flag as typed: `--candidate-context`.
    pub fn flag_name(&self) -> String {
        format!("--{}", self.key())
    }

    /// Refuses this option on a model it does not apply to, when `model` departs from the paper in it.
    pub fn validate(&self, model: &ModelConfig) -> Result<()> {
        if (self.suffix)(model).is_none() {
            return Ok(());
        }
        if !self.applies.to(model.kind) {
            return Err(Error::invalid(self.flag_name(), format!("applies to {}, not {}", self.applies.models(), model.kind.name())));
        }
        (self.check)(model)
    }
}
