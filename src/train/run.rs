//! A training run in its directory, and its management: fresh start or `--resume`, the four folds one
//! after another (`all`), Ctrl-C, and NaN/Inf.
//!
//! A run directory holds `config.toml` (the data, the split and the resolved `TrainConfig`: enough to
//! resume), `log.jsonl` (one line per step, validation and event), `checkpoint-last.safetensors`
//! (written at the start, at every validation, on Ctrl-C and at the end: always a state whose loss
//! was finite), `checkpoint-best.safetensors` (best validation energy), and at the end
//! `metrics.json` and `retrieval-test.jsonl` (retrieval models: what every test set retrieved and
//! selected). A run of every fold keeps one such directory per cell type and a `folds.json`. The
//! files' names and contents are `run_dir.rs`'s.

use super::fold::run_fold;
use super::run_dir::{
    check_recorded_data, claim_dir, RunControl, RunRecord, RunSummary, ALL_FOLDS, BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT,
    METRICS_FILE,
};
use super::Trainer;
use crate::data::path_component;
use crate::data::split::SplitFile;
use crate::data::store::Store;
use crate::data::write_atomic;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

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
        if dir.join(CONFIG_FILE).exists() {
            dirs.push(dir);
        }
    }
    Ok(dirs)
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
        let best = self.dir.join(BEST_CHECKPOINT);
        if best.exists() {
            best
        } else {
            self.dir.join(LAST_CHECKPOINT)
        }
    }

    /// The run's trainer with `checkpoint()` loaded.
    pub fn trainer(&self) -> Result<Trainer<'_>> {
        let mut trainer = Trainer::new(self.record.train.clone(), &self.store, &self.split, &self.record.split)?;
        trainer.load_checkpoint(&self.checkpoint())?;
        Ok(trainer)
    }
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
        let done = dir.join(METRICS_FILE);
        let summary = if resume && done.exists() && RunRecord::read(&dir)?.train.steps == fold.train.steps {
            let text = std::fs::read_to_string(&done).map_err(|e| Error::io(&done, e))?;
            serde_json::from_str(&text).map_err(|e| Error::bad_file(&done, "json", format!("a run summary ({e})")))?
        } else {
            if ctl.progress {
                eprintln!("fold: target cell type {cell_type} -> {}", dir.display());
            }
            run_fold(&fold, store, split, &dir, run_dir, resume && dir.join(CONFIG_FILE).exists(), ctl)?
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
