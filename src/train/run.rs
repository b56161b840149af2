//! A training run in its directory, and its management: fresh start or `--resume`, the four folds one
//! after another (`all`), Ctrl-C, and NaN/Inf.
//!
//! A run directory holds `config.toml` (the data, the split and the resolved `TrainConfig`: enough to
//! resume), `log.jsonl` (one line per step, validation and event), `checkpoint-last.safetensors`
//! (written at the start, at every validation, on Ctrl-C and at the end: always a state whose loss
//! was finite), `checkpoint-best.safetensors` (best validation energy), and at the end
//! `metrics.json` and `retrieval-test.jsonl` (retrieval models: what every test set retrieved and
//! selected). A run of every fold keeps one such directory per cell type and a `folds.json`.

use super::fold::run_fold;
use super::{TrainConfig, Trainer};
use crate::score::retrieval::RetrievalRecord;
use crate::cuda::Gpu;
use crate::data::path_component;
use crate::data::split::SplitFile;
use crate::data::store::Store;
use crate::data::write_atomic;
use crate::model::upgrade_saved_model;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub const ALL_FOLDS: &str = "all";
pub const CONFIG: &str = "config.toml";
pub(super) const LOG: &str = "log.jsonl";
pub(super) const LAST: &str = "checkpoint-last.safetensors";
pub(super) const BEST: &str = "checkpoint-best.safetensors";
pub const METRICS: &str = "metrics.json";
pub(super) const RETRIEVAL: &str = "retrieval-test.jsonl";

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
        let path = run_dir.join(CONFIG);
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
        write_atomic(&run_dir.join(CONFIG), text.as_bytes())
    }
}

/// The fold directories of a run: the run itself, or for an `all` run each finished or started
/// fold's directory.
pub fn fold_dirs(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let record = RunRecord::read(run_dir)?;
    if !record.train.target_cell_type.eq_ignore_ascii_case(ALL_FOLDS) {
        return Ok(vec![run_dir.to_path_buf()]);
    }
    let store = Store::open(&record.data)?;
    let mut dirs = Vec::new();
    for c in &store.manifest.cell_types {
        let dir = run_dir.join(path_component(c)?);
        if dir.join(CONFIG).exists() {
            dirs.push(dir);
        }
    }
    Ok(dirs)
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
                    run_dir.join(CONFIG).display()
                ),
            ));
        }
    }
    Ok(())
}

/// One fold's run directory opened for use after training: its record, data and split.
pub struct TrainedRun {
    pub dir: PathBuf,
    pub record: RunRecord,
    pub store: Store,
    pub split: SplitFile,
}

impl TrainedRun {
    pub fn open(dir: &Path) -> Result<Self> {
        let record = RunRecord::read(dir)?;
        let store = Store::open(&record.data)?;
        check_recorded_data(&record, &store, dir)?;
        store.verify_fingerprint()?;
        let split = SplitFile::read(&record.split)?;
        Ok(TrainedRun { dir: dir.to_path_buf(), record, store, split })
    }

    /// The best checkpoint (by validation), or the last where no validation ran.
    pub fn checkpoint(&self) -> PathBuf {
        let best = self.dir.join(BEST);
        if best.exists() {
            best
        } else {
            self.dir.join(LAST)
        }
    }

    /// The run's trainer with `checkpoint()` loaded.
    pub fn trainer(&self) -> Result<Trainer<'_>> {
        let mut trainer = Trainer::new(self.record.train.clone(), &self.store, &self.split, &self.record.split)?;
        trainer.load_checkpoint(&self.checkpoint())?;
        Ok(trainer)
    }
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

/// Runs `record` in `run_dir`: one fold, or every cell type in turn when the target is `all`.
/// `resume` continues what the directory holds (finished folds are kept).
pub fn execute(
    record: &RunRecord,
    store: &Store,
    split: &SplitFile,
    run_dir: &Path,
    resume: bool,
    ctl: &RunControl,
) -> Result<Vec<RunSummary>> {
    // One process at a time trains or resumes a run directory (a second one used to die on a
    // file the first had just replaced).
    let _lock = crate::data::lock::DirLock::acquire(run_dir, "run directory")?;
    store.check_values()?;
    store.verify_fingerprint()?;
    if !record.train.target_cell_type.eq_ignore_ascii_case(ALL_FOLDS) {
        return Ok(vec![run_fold(record, store, split, run_dir, run_dir, resume, ctl)?]);
    }
    prepare_dir(record, run_dir, resume)?;
    let mut summaries = Vec::new();
    for cell_type in &store.manifest.cell_types {
        let mut fold = record.clone();
        fold.train.target_cell_type = cell_type.clone();
        let dir = run_dir.join(path_component(cell_type)?);
        let done = dir.join(METRICS);
        let summary = if resume && done.exists() && RunRecord::read(&dir)?.train.steps == fold.train.steps {
            let text = std::fs::read_to_string(&done).map_err(|e| Error::io(&done, e))?;
            serde_json::from_str(&text).map_err(|e| Error::bad_file(&done, "json", format!("a run summary ({e})")))?
        } else {
            if ctl.progress {
                eprintln!("fold: target cell type {cell_type} -> {}", dir.display());
            }
            run_fold(&fold, store, split, &dir, run_dir, resume && dir.join(CONFIG).exists(), ctl)?
        };
        summaries.push(summary);
    }
    write_atomic(&run_dir.join("folds.json"), serde_json::to_string_pretty(&summaries).expect("summaries serialise").as_bytes())?;
    Ok(summaries)
}

/// Creates the directory and records the configuration; refuses to overwrite another run.
fn prepare_dir(record: &RunRecord, run_dir: &Path, resume: bool) -> Result<()> {
    claim_dir(run_dir, resume)?;
    record.write(run_dir)
}

/// Creates the directory; refuses one that holds another run (has a configuration) unless resuming it.
pub(super) fn claim_dir(run_dir: &Path, resume: bool) -> Result<()> {
    if !resume && run_dir.join(CONFIG).exists() {
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
