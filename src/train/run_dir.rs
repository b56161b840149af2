//! A run directory's files, and what they hold: the file names, the record (`config.toml`), one
//! fold's summary (`metrics.json`), the state carried in checkpoints, the log and the retrieval
//! records. A leaf under `fold.rs` (one fold's run) and `run.rs` (the run and its folds), which both
//! read and write these files.

use super::TrainConfig;
use crate::cuda::Gpu;
use crate::data::store::Store;
use crate::data::write_atomic;
use crate::model::upgrade_saved_model;
use crate::score::retrieval::RetrievalRecord;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub const ALL_FOLDS: &str = "all";
pub const CONFIG_FILE: &str = "config.toml";
pub(super) const LOG_FILE: &str = "log.jsonl";
pub(super) const LAST_CHECKPOINT: &str = "checkpoint-last.safetensors";
pub(super) const BEST_CHECKPOINT: &str = "checkpoint-best.safetensors";
pub const METRICS_FILE: &str = "metrics.json";
pub(super) const RETRIEVAL_FILE: &str = "retrieval-test.jsonl";

/// What `config.toml` records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub data: PathBuf,
    pub split: PathBuf,
    pub train: TrainConfig,
    /// The store's fingerprint when the run started (none for stores written before fingerprints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_fingerprint: Option<String>,
}

impl RunRecord {
    pub fn read(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut record: serde_json::Value =
            toml::from_str(&text).map_err(|e| Error::bad_file(&path, "toml", format!("a ptrag-engine run record ({})", e.message())))?;
        // The model configuration may be an earlier version's.
        if let Some(model) = record.pointer_mut("/train/model") {
            upgrade_saved_model(model).map_err(|e| Error::bad_file(&path, "train.model", e.to_string()))?;
        }
        serde_json::from_value(record).map_err(|e| Error::bad_file(&path, "toml", format!("a ptrag-engine run record ({e})")))
    }
    pub(super) fn write(&self, run_dir: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).expect("run record serialises");
        write_atomic(&run_dir.join(CONFIG_FILE), text.as_bytes())
    }
}

/// The store holds the data the run in `run_dir` recorded when it started (where both record a
/// fingerprint): `--resume`, `predict` and `evaluate` never use a run with other data.
pub(super) fn check_recorded_data(record: &RunRecord, store: &Store, run_dir: &Path) -> Result<()> {
    if let (Some(was), Some(now)) = (&record.data_fingerprint, &store.manifest.fingerprint) {
        if was != now {
            return Err(Error::bad_file(
                store.dir.join("manifest.json"),
                "fingerprint",
                format!(
                    "the data this run was trained on (fingerprint {was} in {}); this store is another ({now})",
                    run_dir.join(CONFIG_FILE).display()
                ),
            ));
        }
    }
    Ok(())
}

/// How a run is driven from outside.
pub struct RunControl<'a> {
    pub progress: bool,
    /// Set (by a Ctrl-C handler) to stop after the current step, with a checkpoint.
    pub stop: Option<&'a AtomicBool>,
    /// Where training and evaluation run: None for the CPU engine.
    pub gpu: Option<Arc<Gpu>>,
}

/// What one fold's run returns (also its `metrics.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub model: String,
    pub target_cell_type: String,
    pub steps: usize,
    pub best_step: usize,
    pub best_val_energy: Option<f64>,
    pub cells_per_second: f64,
    pub parameters: usize,
    pub trainable_parameters: usize,
    pub test: super::EvalSummary,
    /// Each baseline's test mean-change MSE on the same conditions (`score::baselines`), to read
    /// beside `test.mse_change`.
    #[serde(default)]
    pub baselines_mse_change: std::collections::BTreeMap<String, f64>,
    /// On a store with planted means: the noise floor, the baselines and the oracles against the
    /// truth (the model's own is `test.mse_change_truth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<crate::score::oracles::TruthFigures>,
}

/// Carried in the checkpoints so that a resumed run keeps it: the best validation so far and the
/// time spent in training steps (for the run's cells/s).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct RunState {
    pub(super) best_val_energy: Option<f64>,
    pub(super) best_step: usize,
    #[serde(default)]
    pub(super) train_seconds: f64,
}

pub(super) fn append(log: &mut std::fs::File, path: &Path, value: serde_json::Value) -> Result<()> {
    writeln!(log, "{value}").map_err(|e| Error::io(path, e))
}

/// Creates the directory; refuses one that holds another run (has a configuration) unless resuming it.
pub(super) fn claim_dir(run_dir: &Path, resume: bool) -> Result<()> {
    if !resume && run_dir.join(CONFIG_FILE).exists() {
        return Err(Error::invalid(
            "run directory",
            format!("{} already holds a run; continue it with --resume {0} or choose another --run-dir", run_dir.display()),
        ));
    }
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))
}

/// Keeps the log lines up to `step` (a resumed run rewrites what followed its checkpoint; a line
/// half-written by a kill is dropped). Returns whether a validation line at `step` is kept: the
/// checkpoint of `step` was then written after that validation, which must not run again.
pub(super) fn truncate_log(path: &Path, step: usize) -> Result<bool> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(path, e)),
    };
    let lines: Vec<(&str, serde_json::Value)> = text.lines().filter_map(|l| Some((l, serde_json::from_str(l).ok()?))).collect();
    let kept: Vec<&(&str, serde_json::Value)> =
        lines.iter().filter(|(_, v)| v["step"].as_u64().is_some_and(|s| s as usize <= step)).collect();
    let validated = kept.iter().any(|(_, v)| v["step"].as_u64() == Some(step as u64) && v.get("val_energy").is_some());
    let text: String = kept.iter().map(|(l, _)| format!("{l}\n")).collect();
    write_atomic(path, text.as_bytes())?;
    Ok(validated)
}

pub(super) fn write_records(path: &Path, records: &[RetrievalRecord]) -> Result<()> {
    let text: String = records.iter().map(|r| serde_json::to_string(r).expect("record serialises") + "\n").collect();
    write_atomic(path, text.as_bytes())
}
