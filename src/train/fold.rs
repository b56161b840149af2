//! One fold's run: start it (or resume it), train with validation and checkpoints, then test the
//! best-on-validation weights. Every step and validation is logged to `log.jsonl`, so that a run
//! killed at any instant resumes exactly (`run.rs` has the directory's rules).

use super::run_dir::{
    append, claim_dir, truncate_log, write_records, RunControl, RunRecord, RunState, RunSummary, BEST_CHECKPOINT, CONFIG_FILE,
    LAST_CHECKPOINT, LOG_FILE, METRICS_FILE, RETRIEVAL_FILE,
};
use super::{PendingStats, Trainer};
use crate::data::split::SplitFile;
use crate::data::store::Store;
use crate::data::write_atomic;
use crate::model::OutputAnchor;
use crate::score::baselines::Baselines;
use crate::score::oracles::{StoreTruth, TruthFigures};
use crate::score::planted::{planted_metrics, PlantedTruth};
use crate::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// Trains and tests one fold in `run_dir`; messages tell the user to resume `resume_dir` (the
/// top-level directory of a run of every fold).
pub(super) fn run_fold(
    record: &RunRecord,
    store: &Store,
    split: &SplitFile,
    run_dir: &Path,
    resume_dir: &Path,
    resume: bool,
    ctl: &RunControl,
) -> Result<RunSummary> {
    let mut run = FoldRun::start(record, store, split, run_dir, resume_dir, resume, ctl)?;
    let first_step = run.trainer.step;
    run.train(ctl)?;
    // A run resumed at its last step validates then, unless it had before it was stopped.
    if run.last_saved != run.trainer.step || (first_step == run.trainer.cfg.steps && !run.validated_at_start) {
        run.validate()?;
    }
    run.test(store, run_dir)
}

/// A fold's run in progress: the trainer, its files, and what the run keeps across invocations.
struct FoldRun<'s> {
    trainer: Trainer<'s>,
    truth: Option<PlantedTruth>,
    last_path: PathBuf,
    best_path: PathBuf,
    log_path: PathBuf,
    log: File,
    resume_dir: PathBuf,
    best: RunState,
    /// The step of the last checkpoint written (the one a failure falls back to).
    last_saved: usize,
    /// Whether a resumed run's log already holds the validation of the checkpoint's step.
    validated_at_start: bool,
}

impl<'s> FoldRun<'s> {
    /// A new run (the directory claimed, a first checkpoint, then the configuration), or one
    /// resumed from its last checkpoint after checking that the model and the data are the run's.
    fn start(
        record: &RunRecord,
        store: &'s Store,
        split: &SplitFile,
        run_dir: &Path,
        resume_dir: &Path,
        resume: bool,
        ctl: &RunControl,
    ) -> Result<Self> {
        let mut trainer = Trainer::new(record.train.clone(), store, split, &record.split)?;
        if trainer.fold.val.is_empty() {
            let name = &store.manifest.cell_types[trainer.fold.target];
            eprintln!(
                "warning: no validation perturbation measured in {name}: the run keeps its last weights, and the baselines take their default k and penalty"
            );
        }
        let truth = if trainer.cfg.model.kind.retrieves() { PlantedTruth::load(store)? } else { None };
        if let Some(gpu) = &ctl.gpu {
            trainer.use_gpu(gpu.clone())?;
        }
        let (last_path, best_path, log_path) = (run_dir.join(LAST_CHECKPOINT), run_dir.join(BEST_CHECKPOINT), run_dir.join(LOG_FILE));
        let mut best = RunState { best_val_energy: None, best_step: 0, train_seconds: 0.0 };
        let mut validated_at_start = false;
        if resume {
            check_resumable(&RunRecord::read(run_dir)?, &trainer, store, run_dir)?;
            let state = trainer.load_checkpoint(&last_path)?;
            best = serde_json::from_str(&state)
                .map_err(|e| Error::bad_file(&last_path, "metadata.run_state", format!("run state JSON ({e})")))?;
            if trainer.step > trainer.cfg.steps {
                return Err(Error::invalid("--steps", format!("the checkpoint is at step {}, past {}", trainer.step, trainer.cfg.steps)));
            }
            record.write(run_dir)?;
            validated_at_start = truncate_log(&log_path, trainer.step)?;
        } else {
            // The configuration is recorded last (below), after the first checkpoint: a run killed
            // before that is no run yet, and `train` may start it again in the same directory.
            claim_dir(run_dir, false)?;
            File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
        }
        let log = std::fs::OpenOptions::new().append(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
        let last_saved = trainer.step;
        let run = FoldRun {
            trainer,
            truth,
            last_path,
            best_path,
            log_path,
            log,
            resume_dir: resume_dir.to_path_buf(),
            best,
            last_saved,
            validated_at_start,
        };
        if !resume {
            run.trainer.save_checkpoint(&run.last_path, &run.run_state())?;
            record.write(run_dir)?;
        }
        // The stacked model at step 0 is `linear`; training must earn every move away from it, so
        // its weights are a candidate for the best checkpoint.
        let mut run = run;
        if !resume && run.trainer.cfg.model.output_anchor == OutputAnchor::Linear {
            run.validate()?;
        }
        Ok(run)
    }

    fn run_state(&self) -> String {
        serde_json::to_string(&self.best).expect("serialises")
    }

    /// The error that stops the run at `step`, naming the checkpoint it keeps and how to resume.
    fn stopped(&self, step: usize, what: String) -> Error {
        Error::Numerical {
            step,
            why: format!(
                "{what}; the last good checkpoint (step {}) is kept at {}; continue from it with `--resume {}` (e.g. after lowering --lr in {})",
                self.last_saved,
                self.last_path.display(),
                self.resume_dir.display(),
                self.resume_dir.join(CONFIG_FILE).display()
            ),
        }
    }

    /// A step's failure: a numerical one (at `step`, which on a GPU may be behind `trainer.step`) is
    /// logged and stops the run, keeping the last good checkpoint.
    fn step_failed(&mut self, e: Error) -> Error {
        let Error::Numerical { step, why } = e else { return e };
        match append(&mut self.log, &self.log_path, serde_json::json!({"step": step, "event": "stopped", "why": why})) {
            Ok(()) => self.stopped(step, why),
            Err(e) => e,
        }
    }

    /// Validation: logs, keeps the best weights, and checkpoints the run.
    fn validate(&mut self) -> Result<()> {
        let trainer = &self.trainer;
        if !trainer.fold.val.is_empty() {
            let evaluated = trainer.evaluate(&trainer.fold.val, 1, None);
            let (summary, records) = evaluated.map_err(|e| self.step_failed(e))?;
            let trainer = &self.trainer;
            let mut line = serde_json::json!({"step": trainer.step, "val_energy": summary.energy, "val_mse_change": summary.mse_change,
                    "val_mse_change_control_baseline": summary.mse_change_control_baseline, "val_mean_selected": summary.mean_selected});
            // On synthetic data, how well retrieval and selection find the planted relevant candidates.
            if let Some(m) = self.truth.as_ref().and_then(|t| planted_metrics(&records, t).into_values().next()) {
                line["val_retrieval_precision"] = m.retrieval_precision.into();
                line["val_selection_precision"] = m.selection_precision.into();
            }
            if let Some(gap) = &summary.logit_gap {
                line["val_logit_gap"] = serde_json::to_value(gap).expect("numbers serialise");
            }
            append(&mut self.log, &self.log_path, line)?;
            if !summary.energy.is_finite() {
                return Err(self.stopped(self.trainer.step, format!("the validation energy is {}", summary.energy)));
            }
            if self.best.best_val_energy.is_none_or(|b| summary.energy < b) {
                self.best = RunState { best_val_energy: Some(summary.energy), best_step: self.trainer.step, ..self.best };
                self.trainer.save_checkpoint(&self.best_path, &self.run_state())?;
            }
        }
        self.trainer.save_checkpoint(&self.last_path, &self.run_state())?;
        self.last_saved = self.trainer.step;
        Ok(())
    }

    /// Whether a validation is due after `step` (the end of the run validates separately).
    fn validates(&self, step: usize) -> bool {
        let cfg = &self.trainer.cfg;
        cfg.val_every > 0 && step.is_multiple_of(cfg.val_every) && step < cfg.steps
    }

    /// Trains to the configured step count, validating on schedule; a stop request checkpoints
    /// and returns `Error::Interrupted`.
    fn train(&mut self, ctl: &RunControl) -> Result<()> {
        let steps = self.trainer.cfg.steps;
        let cells_per_step = (self.trainer.cfg.sets_per_batch * self.trainer.cfg.cells_per_set) as f64;
        let bar = crate::progress::bar(steps as u64, "steps", ctl.progress);
        bar.set_position(self.trainer.step as u64);
        let start = std::time::Instant::now();
        let mut smoothed: Option<f64> = None;
        let stop_requested = || ctl.stop.is_some_and(|f| f.load(Ordering::SeqCst));
        // The step in flight: on a GPU the next one is queued before its statistics are read, so the
        // GPU does not wait for the host between steps. Not across a validation, a stop or the end,
        // which need the step finished and nothing beyond it. A step's time is what its own calls
        // took (queuing it, then finishing it): on the CPU all of it is in the queuing, on a GPU
        // the wait is in the finishing.
        let mut in_flight: Option<(PendingStats, f64)> = None;
        loop {
            let done = self.trainer.step;
            let must_finish = in_flight.is_some() && (self.validates(done) || stop_requested());
            let next = (done < steps && !must_finish).then(|| {
                let clock = std::time::Instant::now();
                self.trainer.queue_step().map(|pending| (pending, clock.elapsed().as_secs_f64()))
            });
            if let Some((pending, queued_seconds)) = in_flight.take() {
                let clock = std::time::Instant::now();
                let stats = pending.finish().map_err(|e| self.step_failed(e))?;
                let seconds = queued_seconds + clock.elapsed().as_secs_f64();
                self.best.train_seconds += seconds;
                let rate = cells_per_step / seconds;
                append(
                    &mut self.log,
                    &self.log_path,
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
                    if self.validates(done) {
                        self.validate()?;
                    }
                    // After this step's validation, so that a resumed run does not skip it.
                    if stop_requested() {
                        bar.finish_and_clear();
                        return Err(self.interrupt());
                    }
                }
            }
            in_flight = match next {
                None if self.trainer.step >= steps => break,
                None => None,
                Some(Ok(pending)) => Some(pending),
                Some(Err(e)) => return Err(self.step_failed(e)),
            };
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Checkpoints and logs a stop request; the error tells the user how to resume.
    fn interrupt(&mut self) -> Error {
        let saved = self.trainer.save_checkpoint(&self.last_path, &self.run_state());
        let logged = saved
            .and_then(|()| append(&mut self.log, &self.log_path, serde_json::json!({"step": self.trainer.step, "event": "interrupted"})));
        match logged {
            Ok(()) => Error::Interrupted { step: self.trainer.step, checkpoint: self.last_path.clone(), run_dir: self.resume_dir.clone() },
            Err(e) => e,
        }
    }

    /// Tests the best-on-validation weights (the last ones without a validation split) and writes
    /// `metrics.json` and, for the retrieval models, the test retrieval records.
    fn test(mut self, store: &Store, run_dir: &Path) -> Result<RunSummary> {
        let trainer = &mut self.trainer;
        let steps = trainer.cfg.steps;
        // Training steps only (validation excluded), over every invocation of this run.
        let cells_per_step = (trainer.cfg.sets_per_batch * trainer.cfg.cells_per_set) as f64;
        let cells_per_second = cells_per_step * trainer.step as f64 / self.best.train_seconds.max(1e-9);
        if self.best.best_val_energy.is_some() {
            trainer.load_checkpoint(&self.best_path)?;
        }
        let truth = StoreTruth::load(store)?;
        let evaluated = trainer.evaluate(&trainer.fold.test, trainer.cfg.eval_draws, truth.as_ref().map(|t| &t.means));
        let (test, records) = evaluated.map_err(|e| self.step_failed(e))?;
        let trainer = &mut self.trainer;
        let fitted = Baselines::fit(store, &trainer.fold)?;
        let baselines = fitted.mean_change_mse(store, &trainer.fold.test);
        let truth = truth.map(|t| TruthFigures::of(&t, store, &fitted, &trainer.fold.test));
        if trainer.cfg.model.kind.retrieves() {
            write_records(&run_dir.join(RETRIEVAL_FILE), &records)?;
        }
        let summary = RunSummary {
            run_dir: run_dir.to_path_buf(),
            model: trainer.cfg.model.variant_name(),
            target_cell_type: trainer.cfg.target_cell_type.clone(),
            steps,
            best_step: if self.best.best_val_energy.is_some() { self.best.best_step } else { steps },
            best_val_energy: self.best.best_val_energy,
            cells_per_second,
            parameters: trainer.params.count(),
            trainable_parameters: trainer.params.trainable_count(),
            test,
            baselines_mse_change: baselines.into_iter().map(|(b, v)| (b.name().to_string(), v)).collect(),
            truth,
        };
        write_atomic(&run_dir.join(METRICS_FILE), serde_json::to_string_pretty(&summary).expect("summary serialises").as_bytes())?;
        Ok(summary)
    }
}

/// A resumed run must have the model it was trained with and, where both record one, the data.
fn check_resumable(saved: &RunRecord, trainer: &Trainer, store: &Store, run_dir: &Path) -> Result<()> {
    if saved.train.model != trainer.cfg.model {
        return Err(Error::bad_file(run_dir.join(CONFIG_FILE), "train.model", "the model of the run being resumed"));
    }
    super::run_dir::check_recorded_data(saved, store, run_dir)
}
