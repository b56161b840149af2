//! `train`'s options: command-line flags and the same keys in a TOML run config (`--config`), flags
//! winning; resolved against the data into a complete `TrainConfig` that the run directory records.

use super::{EvalSelection, RetrievalDatabase, TrainConfig};
use crate::data::store::Store;
use crate::model::beyond::{BeyondPaper, REGISTRY};
use crate::model::{ModelKind, SelfExclusion};
use crate::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Presets of the reference-compatibility switches (docs/design.md, "Reference compatibility").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Compat {
    /// Our corrected behaviour (the default).
    None,
    /// Everything as the paper's code ran: causal attention with rotary positions, frozen backbone and
    /// head, selection sampled at evaluation, retrieval from training perturbations only, the
    /// self-exclusion bug in training, PyTorch's default initialisation.
    Reference,
}

/// The help heading of the reference-compatibility switches (docs/design.md, "Reference compatibility").
const REFERENCE: &str = "Reference compatibility (the paper's code as it ran)";

/// Every flag is optional so that a TOML file can supply it; unset means the default shown.
/// Boolean switches take an optional value: `--frozen-backbone` is `--frozen-backbone true`.
#[derive(clap::Args, Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(next_help_heading = "The run and the paper's model")]
pub struct TrainOptions {
    /// Read options from this TOML file (keys are the flag names, e.g. `top-k = 16`); flags win.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint, with its recorded configuration
    /// (only `--steps` may change, to extend it).
    #[arg(long)]
    #[serde(skip)]
    pub resume: Option<PathBuf>,
    /// Where to train and evaluate: cpu, cuda, or auto (a GPU when one is usable, else the CPU);
    /// not part of the run's configuration, so a run may resume on another device [default: cpu].
    #[arg(long, value_enum)]
    #[serde(skip)]
    pub device: Option<crate::cuda::DeviceChoice>,
    /// Model [default: state].
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// A dataset store directory; without it the built-in data of `--preset` is used.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Built-in data preset when `--data` is not given: calibrated, small, tiny or replogle [default: calibrated].
    #[arg(long)]
    pub preset: Option<String>,
    /// cell-load style split TOML [default: the store's split.toml].
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// The held-out target cell type, or `all` for every fold in turn [default: the store's first].
    #[arg(long)]
    pub target_cell_type: Option<String>,
    /// Run directory [default: runs/<model>-<target>-<seed>].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Optimisation steps [default: 400; the paper ran 50,000 of 64 x 64].
    #[arg(long)]
    pub steps: Option<usize>,
    /// [default: 16; paper 64]
    #[arg(long)]
    pub sets_per_batch: Option<usize>,
    /// [default: 16; paper 64]
    #[arg(long)]
    pub cells_per_set: Option<usize>,
    /// [default: 128]
    #[arg(long)]
    pub hidden: Option<usize>,
    /// [default: 8]
    #[arg(long)]
    pub layers: Option<usize>,
    /// [default: 12]
    #[arg(long)]
    pub heads: Option<usize>,
    /// [default: 58]
    #[arg(long)]
    pub head_dim: Option<usize>,
    /// SwiGLU width [default: 2784]
    #[arg(long)]
    pub mlp: Option<usize>,
    /// [default: 0.001]
    #[arg(long)]
    pub lr: Option<f64>,
    /// [default: 0]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Gradient-norm clipping threshold, 0 = off [default: 10]
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// [default: 42]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Validate every N steps, 0 = only at the end [default: 100]
    #[arg(long)]
    pub val_every: Option<usize>,
    /// Candidates retrieved per query (retrieval models) [default: 32]
    #[arg(long)]
    pub top_k: Option<usize>,
    /// PT-RAG's sparsity weight lambda [default: 0.1]
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// PT-RAG's Gumbel-Softmax temperature [default: 0.5]
    #[arg(long)]
    pub tau: Option<f64>,
    /// PT-RAG's scorer dropout [default: 0.1]
    #[arg(long)]
    pub scorer_dropout: Option<f64>,
    /// At test, draws of paired control cells over which a model's predicted mean change is
    /// averaged (the distributional metrics keep the first draw's cells) [default: 8]
    #[arg(long)]
    pub eval_draws: Option<usize>,
    /// PT-RAG's selection at evaluation: `expected` (inclusion probabilities), `hard` (include iff the
    /// include logit is larger) or `sampled` (Gumbel noise, as the reference) [default: expected]
    #[arg(long, value_enum)]
    pub eval_selection: Option<EvalSelection>,
    /// The options beyond the paper (`model::beyond`): TOML keys as their flags, read apart.
    #[command(flatten)]
    #[serde(skip)]
    pub beyond: BeyondPaper,
    /// Reference-compatibility preset; the finer switches below override it [default: none]
    #[arg(long, value_enum, help_heading = REFERENCE)]
    pub compat: Option<Compat>,
    /// Causal attention with rotary positions (theta 10000) over the set, as the reference.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = REFERENCE)]
    pub causal_rope: Option<bool>,
    /// Keep the backbone and output head at their initialisation, as the reference.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = REFERENCE)]
    pub frozen_backbone: Option<bool>,
    /// Which perturbations retrieval may return [default: all]
    #[arg(long, value_enum, help_heading = REFERENCE)]
    pub retrieval_db: Option<RetrievalDatabase>,
    /// The reference's training-time indexing bug: only the first set of a batch excludes itself.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = REFERENCE)]
    pub self_retrieval_bug: Option<bool>,
    /// PyTorch's default initialisation of the perturbation encoder and output bias, as the reference.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = REFERENCE)]
    pub reference_init: Option<bool>,
    /// PyTorch's default output-bias initialisation instead of the training mean expression.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = REFERENCE)]
    pub default_head_init: Option<bool>,
}

macro_rules! fields {
    ($m:ident) => {
        $m!(
            model,
            data,
            preset,
            split,
            target_cell_type,
            run_dir,
            steps,
            sets_per_batch,
            cells_per_set,
            hidden,
            layers,
            heads,
            head_dim,
            mlp,
            lr,
            weight_decay,
            clip_norm,
            seed,
            val_every,
            top_k,
            sparsity,
            tau,
            scorer_dropout,
            compat,
            causal_rope,
            frozen_backbone,
            eval_selection,
            eval_draws,
            retrieval_db,
            self_retrieval_bug,
            reference_init,
            default_head_init
        )
    };
}

impl TrainOptions {
    /// These options over the TOML file's (when `--config` was given).
    pub fn with_config_file(self) -> Result<Self> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| Error::bad_file(&path, "toml", format!("train options ({})", e.message())))?;
        // The options beyond the paper are `BeyondPaper`'s keys: read apart, each struct refusing
        // what it does not know.
        let beyond_keys: Vec<String> = REGISTRY.iter().map(|o| o.key()).collect();
        let beyond: toml::Table = beyond_keys.iter().filter_map(|k| Some((k.clone(), table.remove(k)?))).collect();
        let beyond: BeyondPaper = keyed(beyond, &path)?;
        let file: TrainOptions = keyed(table, &path)?;
        let mut merged = self;
        merged.beyond = merged.beyond.or(beyond);
        macro_rules! merge {
            ($($f:ident),*) => { $( if merged.$f.is_none() { merged.$f = file.$f; } )* };
        }
        fields!(merge);
        Ok(merged)
    }

    /// The flag names of the options that are set (to refuse them on `--resume`).
    pub fn set_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        macro_rules! named {
            ($($f:ident),*) => { $( if self.$f.is_some() { names.push(format!("--{}", stringify!($f).replace('_', "-"))); } )* };
        }
        fields!(named);
        names.extend(self.beyond.set().iter().map(|o| o.flag_name()));
        names
    }

    /// The complete configuration for `store`, for the target cell type `target` (a name or `all`).
    pub fn resolve(&self, store: &Store, target: &str) -> Result<TrainConfig> {
        let kind = self.model.unwrap_or(ModelKind::State);
        let reference = self.compat == Some(Compat::Reference);
        crate::train::needs_genept(kind, store)?;
        let mut c = TrainConfig::defaults(kind, store, target);
        let only = |flag: &str, set: bool, ok: bool, models: &str| -> Result<()> {
            if set && !ok {
                return Err(Error::invalid(format!("--{flag}"), format!("applies to {models}, not {}", kind.name())));
            }
            Ok(())
        };
        let pt_rag = kind == ModelKind::PtRag;
        only("top-k", self.top_k.is_some(), kind.retrieves(), "vanilla-rag and pt-rag")?;
        only("retrieval-db", self.retrieval_db.is_some(), kind.retrieves(), "vanilla-rag and pt-rag")?;
        only("self-retrieval-bug", self.self_retrieval_bug.is_some(), kind.retrieves(), "vanilla-rag and pt-rag")?;
        only("sparsity", self.sparsity.is_some(), pt_rag, "pt-rag")?;
        only("tau", self.tau.is_some(), pt_rag, "pt-rag")?;
        only("scorer-dropout", self.scorer_dropout.is_some(), pt_rag, "pt-rag")?;
        only("eval-selection", self.eval_selection.is_some(), pt_rag, "pt-rag")?;
        for option in self.beyond.set() {
            only(&option.key(), true, option.applies.to(kind), option.applies.models())?;
        }

        macro_rules! set {
            ($($dst:expr => $src:ident),*) => { $( if let Some(v) = self.$src.clone() { $dst = v; } )* };
        }
        set!(c.steps => steps, c.sets_per_batch => sets_per_batch, c.cells_per_set => cells_per_set, c.seed => seed,
             c.val_every => val_every, c.eval_draws => eval_draws, c.sparsity => sparsity, c.adam.lr => lr, c.adam.weight_decay => weight_decay,
             c.adam.clip_norm => clip_norm, c.model.hidden => hidden, c.model.layers => layers, c.model.heads => heads,
             c.model.head_dim => head_dim, c.model.mlp => mlp, c.model.top_k => top_k, c.model.tau => tau,
             c.model.scorer_dropout => scorer_dropout);
        self.beyond.apply(&mut c.model);
        let causal = self.causal_rope.unwrap_or(reference);
        c.model.causal = causal;
        c.model.rope_theta = causal.then_some(10000.0);
        c.model.frozen_backbone = self.frozen_backbone.unwrap_or(reference);
        c.model.reference_init = self.reference_init.unwrap_or(reference);
        c.head_bias_from_data = !self.default_head_init.unwrap_or(c.model.reference_init);
        c.eval_selection = self.eval_selection.unwrap_or(if reference { EvalSelection::Sampled } else { EvalSelection::Expected });
        c.retrieval_database = self.retrieval_db.unwrap_or(if reference { RetrievalDatabase::Training } else { RetrievalDatabase::All });
        c.model.self_exclusion =
            if self.self_retrieval_bug.unwrap_or(reference) { SelfExclusion::FirstSetInTraining } else { SelfExclusion::Always };

        if !(1..=super::MAX_EVAL_DRAWS).contains(&c.eval_draws) {
            let why = format!("from 1 to {} draws of paired control cells, got {}", super::MAX_EVAL_DRAWS, c.eval_draws);
            return Err(Error::invalid("--eval-draws", why));
        }
        if !(c.adam.lr > 0.0 && c.adam.lr.is_finite()) {
            return Err(Error::invalid("--lr", format!("must be a positive number, got {}", c.adam.lr)));
        }
        if !(c.adam.clip_norm >= 0.0 && c.adam.clip_norm.is_finite()) {
            return Err(Error::invalid("--clip-norm", format!("a finite number >= 0 (0 turns clipping off), got {}", c.adam.clip_norm)));
        }
        if !(c.adam.weight_decay >= 0.0 && c.adam.weight_decay.is_finite()) {
            return Err(Error::invalid("--weight-decay", format!("a finite number >= 0, got {}", c.adam.weight_decay)));
        }
        if c.steps == 0 {
            return Err(Error::invalid("--steps", "must be at least 1"));
        }
        c.model.validate()?;
        check_storable(&c)?;
        let batch = format!("--sets-per-batch {}, --cells-per-set {}", c.sets_per_batch, c.cells_per_set);
        c.model.check_training_fits(c.sets_per_batch, c.cells_per_set, &batch)?;
        Ok(c)
    }

    /// `runs/<model variant>-<target>-<seed>` unless `--run-dir` was given.
    pub fn run_dir(&self, cfg: &TrainConfig) -> Result<PathBuf> {
        match &self.run_dir {
            Some(dir) => Ok(dir.clone()),
            None => {
                let target = crate::data::path_component(&cfg.target_cell_type)?;
                Ok(Path::new("runs").join(format!("{}-{}-{}", cfg.model.variant_name(), target, cfg.seed)))
            }
        }
    }
}

/// `table` as options; an error names the key at fault (toml's own error on a whole table does not).
fn keyed<T: serde::de::DeserializeOwned>(table: toml::Table, path: &Path) -> Result<T> {
    table.clone().try_into().map_err(|whole: toml::de::Error| {
        let at_fault = table.into_iter().find_map(|(key, value)| {
            let one: std::result::Result<T, toml::de::Error> = toml::Table::from_iter([(key.clone(), value)]).try_into();
            one.err().map(|e| (key, e))
        });
        match at_fault {
            Some((key, e)) => Error::bad_file(path, key, format!("a train option ({})", e.message())),
            None => Error::bad_file(path, "toml", format!("train options ({})", whole.message())),
        }
    })
}

/// Every integer of the configuration must fit the run record, whose TOML integers are signed 64-bit
/// (a seed of 2^63 or more would be accepted, then fail when the record is written).
fn check_storable(c: &TrainConfig) -> Result<()> {
    fn walk(key: &str, v: &serde_json::Value) -> Result<()> {
        match v {
            serde_json::Value::Number(n) if n.as_u64().is_some_and(|u| u > i64::MAX as u64) => Err(Error::invalid(
                format!("--{}", key.replace('_', "-")),
                format!("at most {} (a run record holds signed 64-bit integers), got {n}", i64::MAX),
            )),
            serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| walk(k, v)),
            serde_json::Value::Array(items) => items.iter().try_for_each(|v| walk(key, v)),
            _ => Ok(()),
        }
    }
    walk("config", &serde_json::to_value(c).expect("a configuration serialises"))
}
