//! A training run in its directory, and its management: fresh start or `--resume`, the four folds one
//! after another (`all`), Ctrl-C, and NaN/Inf.
//!
//! A run directory holds `config.toml` (the data, the split and the resolved `TrainConfig`: enough to
//! resume), `log.jsonl` (one line per step, validation and event), `checkpoint-last.safetensors`
//! (written at the start, at every validation, on Ctrl-C and at the end: always a state whose loss
//! was finite), `checkpoint-best.safetensors` (best validation energy), and at the end
//! `metrics.json` and `retrieval-test.jsonl` (retrieval models: what every test set retrieved and
//! selected). A run of every fold keeps one such directory per cell type and a `folds.json`.

use super::{PendingStats, RetrievalRecord, TrainConfig, Trainer};
use crate::cuda::Gpu;
use crate::data::split::SplitFile;
use crate::data::store::Store;
use crate::data::write_atomic;
use crate::eval::baselines::Baselines;
use crate::eval::planted::{planted_metrics, PlantedTruth};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const ALL_FOLDS: &str = "all";
pub const CONFIG: &str = "config.toml";
const LOG: &str = "log.jsonl";
const LAST: &str = "checkpoint-last.safetensors";
const BEST: &str = "checkpoint-best.safetensors";
pub const METRICS: &str = "metrics.json";
const RETRIEVAL: &str = "retrieval-test.jsonl";

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
        toml::from_str(&text).map_err(|e| Error::bad_file(&path, "toml", format!("a ptrag-engine run record ({})", e.message())))
    }
    fn write(&self, run_dir: &Path) -> Result<()> {
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
    Ok(store.manifest.cell_types.iter().map(|c| run_dir.join(c.to_lowercase())).filter(|d| d.join(CONFIG).exists()).collect())
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
    /// Each baseline's test mean-change MSE on the same conditions (`eval::baselines`), to read
    /// beside `test.mse_change`.
    #[serde(default)]
    pub baselines_mse_change: std::collections::BTreeMap<String, f64>,
}

/// Carried in the checkpoints so that a resumed run keeps it: the best validation so far and the
/// time spent in training steps (for the run's cells/s).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct RunState {
    best_val_energy: Option<f64>,
    best_step: usize,
    #[serde(default)]
    train_seconds: f64,
}

fn append(log: &mut std::fs::File, path: &Path, value: serde_json::Value) -> Result<()> {
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
    if !record.train.target_cell_type.eq_ignore_ascii_case(ALL_FOLDS) {
        return Ok(vec![run_fold(record, store, split, run_dir, run_dir, resume, ctl)?]);
    }
    prepare_dir(record, run_dir, resume)?;
    let mut summaries = Vec::new();
    for cell_type in &store.manifest.cell_types {
        let mut fold = record.clone();
        fold.train.target_cell_type = cell_type.clone();
        let dir = run_dir.join(cell_type.to_lowercase());
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
fn claim_dir(run_dir: &Path, resume: bool) -> Result<()> {
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
fn truncate_log(path: &Path, step: usize) -> Result<bool> {
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

/// Trains and tests one fold in `run_dir`; messages tell the user to resume `resume_dir` (the
/// top-level directory of a run of every fold).
fn run_fold(
    record: &RunRecord,
    store: &Store,
    split: &SplitFile,
    run_dir: &Path,
    resume_dir: &Path,
    resume: bool,
    ctl: &RunControl,
) -> Result<RunSummary> {
    let cfg = record.train.clone();
    let mut trainer = Trainer::new(cfg, store, split, &record.split)?;
    let truth = if trainer.cfg.model.kind.retrieves() { PlantedTruth::load(store)? } else { None };
    if let Some(gpu) = &ctl.gpu {
        trainer.use_gpu(gpu.clone())?;
    }
    let (last_path, best_path, log_path) = (run_dir.join(LAST), run_dir.join(BEST), run_dir.join(LOG));
    let mut best = RunState { best_val_energy: None, best_step: 0, train_seconds: 0.0 };
    let mut validated_at_start = false;
    if resume {
        let saved = RunRecord::read(run_dir)?;
        if saved.train.model != trainer.cfg.model {
            return Err(Error::bad_file(run_dir.join(CONFIG), "train.model", "the model of the run being resumed"));
        }
        if let (Some(was), Some(now)) = (&saved.data_fingerprint, &store.manifest.fingerprint) {
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
        let state = trainer.load_checkpoint(&last_path)?;
        best =
            serde_json::from_str(&state).map_err(|e| Error::bad_file(&last_path, "metadata.run_state", format!("run state JSON ({e})")))?;
        if trainer.step > trainer.cfg.steps {
            return Err(Error::invalid("--steps", format!("the checkpoint is at step {}, past {}", trainer.step, trainer.cfg.steps)));
        }
        record.write(run_dir)?;
        validated_at_start = truncate_log(&log_path, trainer.step)?;
    } else {
        // The configuration is recorded last (below), after the first checkpoint: a run killed
        // before that is no run yet, and `train` may start it again in the same directory.
        claim_dir(run_dir, false)?;
        std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    }
    let run_state = |b: &RunState| serde_json::to_string(b).expect("serialises");
    let mut log = std::fs::OpenOptions::new().append(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let mut last_saved = trainer.step;
    if !resume {
        trainer.save_checkpoint(&last_path, &run_state(&best))?;
        record.write(run_dir)?;
    }

    let steps = trainer.cfg.steps;
    let cells_per_step = (trainer.cfg.sets_per_batch * trainer.cfg.cells_per_set) as f64;
    let bar = crate::progress::bar(steps as u64, "steps", ctl.progress);
    bar.set_position(trainer.step as u64);
    let start = std::time::Instant::now();
    let first_step = trainer.step;
    let stopped = |step: usize, what: String, last_saved: usize| {
        Error::Numerical {
        step,
        why: format!(
            "{what}; the last good checkpoint (step {last_saved}) is kept at {}; continue from it with `--resume {}` (e.g. after lowering --lr in {})",
            last_path.display(),
            resume_dir.display(),
            resume_dir.join(CONFIG).display()
        ),
    }
    };

    // Validation: logs, keeps the best weights, and checkpoints the run.
    let validate = |trainer: &Trainer, log: &mut std::fs::File, best: &mut RunState, last_saved: &mut usize| -> Result<()> {
        if !trainer.fold.val.is_empty() {
            let (summary, records) = trainer.evaluate(&trainer.fold.val)?;
            let mut line = serde_json::json!({"step": trainer.step, "val_energy": summary.energy, "val_mse_change": summary.mse_change,
                    "val_mse_change_control_baseline": summary.mse_change_control_baseline, "val_mean_selected": summary.mean_selected});
            // On synthetic data, how well retrieval and selection find the planted relevant candidates.
            if let Some(m) = truth.as_ref().and_then(|t| planted_metrics(&records, t).into_values().next()) {
                line["val_retrieval_precision"] = m.retrieval_precision.into();
                line["val_selection_precision"] = m.selection_precision.into();
            }
            if let Some(gap) = &summary.logit_gap {
                line["val_logit_gap"] = serde_json::to_value(gap).expect("numbers serialise");
            }
            append(log, &log_path, line)?;
            if !summary.energy.is_finite() {
                return Err(stopped(trainer.step, format!("the validation energy is {}", summary.energy), *last_saved));
            }
            if best.best_val_energy.is_none_or(|b| summary.energy < b) {
                *best = RunState { best_val_energy: Some(summary.energy), best_step: trainer.step, ..*best };
                trainer.save_checkpoint(&best_path, &run_state(best))?;
            }
        }
        trainer.save_checkpoint(&last_path, &run_state(best))?;
        *last_saved = trainer.step;
        Ok(())
    };

    let mut smoothed: Option<f64> = None;
    let stop_requested = || ctl.stop.is_some_and(|f| f.load(Ordering::SeqCst));
    let validates =
        |step: usize, trainer: &Trainer| trainer.cfg.val_every > 0 && step.is_multiple_of(trainer.cfg.val_every) && step < steps;
    // The step in flight: on a GPU the next one is queued before its statistics are read, so the GPU
    // does not wait for the host between steps. Not across a validation, a stop or the end, which
    // need the step finished and nothing beyond it.
    // A step's time is what its own calls took (queuing it, then finishing it): on the CPU all of
    // it is in the queuing, on a GPU the wait is in the finishing.
    let mut in_flight: Option<(PendingStats, f64)> = None;
    // A step's failure: a numerical one (at `step`, which on a GPU may be behind `trainer.step`) is
    // logged and stops the run, keeping the last good checkpoint.
    let step_failed = |e: Error, log: &mut std::fs::File, last_saved: usize| -> Error {
        let Error::Numerical { step, why } = e else { return e };
        match append(log, &log_path, serde_json::json!({"step": step, "event": "stopped", "why": why})) {
            Ok(()) => stopped(step, why, last_saved),
            Err(e) => e,
        }
    };
    loop {
        let done = trainer.step;
        let must_finish = in_flight.is_some() && (validates(done, &trainer) || stop_requested());
        let next = (done < steps && !must_finish).then(|| {
            let clock = std::time::Instant::now();
            trainer.queue_step().map(|pending| (pending, clock.elapsed().as_secs_f64()))
        });
        if let Some((pending, queued_seconds)) = in_flight.take() {
            let clock = std::time::Instant::now();
            let stats = pending.finish().map_err(|e| step_failed(e, &mut log, last_saved))?;
            let seconds = queued_seconds + clock.elapsed().as_secs_f64();
            best.train_seconds += seconds;
            let rate = cells_per_step / seconds;
            append(
                &mut log,
                &log_path,
                serde_json::json!({"step": done, "loss": stats.loss, "energy": stats.energy, "selected": stats.selected,
                    "grad_norm": stats.grad_norm, "scorer_grad_norm": stats.scorer_grad_norm, "cells_per_s": rate,
                    "elapsed_s": start.elapsed().as_secs_f64()}),
            )?;
            let s = smoothed.map_or(stats.loss, |s| 0.9 * s + 0.1 * stats.loss);
            smoothed = Some(s);
            let sel = stats.selected.map(|k| format!(" | selected {k:.1}")).unwrap_or_default();
            bar.set_message(format!("loss {s:.4}{sel} | {rate:.0} cells/s"));
            bar.inc(1);
            if next.is_none() {
                if validates(done, &trainer) {
                    validate(&trainer, &mut log, &mut best, &mut last_saved)?;
                }
                // After this step's validation, so that a resumed run does not skip it.
                if stop_requested() {
                    bar.finish_and_clear();
                    trainer.save_checkpoint(&last_path, &run_state(&best))?;
                    append(&mut log, &log_path, serde_json::json!({"step": trainer.step, "event": "interrupted"}))?;
                    return Err(Error::Interrupted {
                        step: trainer.step,
                        checkpoint: last_path.clone(),
                        run_dir: resume_dir.to_path_buf(),
                    });
                }
            }
        }
        in_flight = match next {
            None if trainer.step >= steps => break,
            None => None,
            Some(Ok(pending)) => Some(pending),
            Some(Err(e)) => return Err(step_failed(e, &mut log, last_saved)),
        };
    }
    // A run resumed at its last step validates then, unless it had before it was stopped.
    if last_saved != trainer.step || (first_step == steps && !validated_at_start) {
        validate(&trainer, &mut log, &mut best, &mut last_saved)?;
    }
    bar.finish_and_clear();
    // Training steps only (validation excluded), over every invocation of this run.
    let cells_per_second = cells_per_step * trainer.step as f64 / best.train_seconds.max(1e-9);
    // Test the best-on-validation weights (the last ones when there is no validation split).
    if best.best_val_energy.is_some() {
        trainer.load_checkpoint(&best_path)?;
    }
    let (test, records) = trainer.evaluate(&trainer.fold.test)?;
    let baselines = Baselines::fit(store, &trainer.fold)?.mean_change_mse(store, &trainer.fold.test);
    if trainer.cfg.model.kind.retrieves() {
        write_records(&run_dir.join(RETRIEVAL), &records)?;
    }
    let summary = RunSummary {
        run_dir: run_dir.to_path_buf(),
        model: trainer.cfg.model.variant_name(),
        target_cell_type: trainer.cfg.target_cell_type.clone(),
        steps,
        best_step: if best.best_val_energy.is_some() { best.best_step } else { steps },
        best_val_energy: best.best_val_energy,
        cells_per_second,
        parameters: trainer.params.count(),
        trainable_parameters: trainer.params.trainable_count(),
        test,
        baselines_mse_change: baselines.into_iter().map(|(b, v)| (b.name().to_string(), v)).collect(),
    };
    write_atomic(&run_dir.join(METRICS), serde_json::to_string_pretty(&summary).expect("summary serialises").as_bytes())?;
    Ok(summary)
}

fn write_records(path: &Path, records: &[RetrievalRecord]) -> Result<()> {
    let text: String = records.iter().map(|r| serde_json::to_string(r).expect("record serialises") + "\n").collect();
    write_atomic(path, text.as_bytes())
}
