//! `predict`: a trained run's predictions for its test perturbations, and the real cells, as two
//! `.h5ad` files for external evaluators (Arc Institute's `cell-eval`, scanpy). Both files have the
//! store's genes in its order, obs columns for the perturbation and the cell type (categoricals),
//! X >= 0, and the target cell type's real control cells (labelled with the control) in both;
//! predicted and real cells of a perturbation come in equal numbers. With a baseline, its
//! predictions (fitted on the run's fold, `baselines`) replace the model's. `real.h5ad` carries the
//! PCA of the run's `evaluate` (fitted on training cells) as scanpy keeps one, `varm["PCs"]`, so
//! that `evaluate --pred/--real` computes the distributional metrics in the same space.

use crate::data::h5ad::{write_h5ad, write_h5ad_with_varm, AnnData};
use crate::data::output::OutputSet;
use crate::data::sampler::evaluation_sets;
use crate::score::baselines::{Baseline, Baselines};
use crate::train::run::{fold_dirs, TrainedRun};
use crate::train::Trainer;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct PredictOptions {
    /// obs column of the perturbation (Replogle-Nadig files call it `gene`).
    pub pert_col: String,
    /// obs column of the cell type (`cell_line`).
    pub cell_type_col: String,
    /// Predict with this baseline (fitted on the run's fold) instead of the run's model.
    pub baseline: Option<Baseline>,
    /// Write predictions as computed, negative values included (by default clamped at 0, as
    /// expression is and cell-eval expects): `evaluate --pred/--real` then reproduces the run's
    /// `evaluate` exactly on the metrics without a PCA.
    pub unclamped: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions { pert_col: "gene".into(), cell_type_col: "cell_line".into(), baseline: None, unclamped: false }
    }
}

/// The `(predicted, real)` AnnData of one fold's run (`trainer`: `run.trainer()`): controls first,
/// then every test condition.
pub fn fold_predictions(run: &TrainedRun, trainer: &Trainer, opts: &PredictOptions) -> Result<(AnnData, AnnData)> {
    let (store, fold) = (&run.store, &trainer.fold);
    let names = &store.manifest;
    let cell_type = names.cell_types[fold.target].clone();
    let empty = |var_names: &[String]| AnnData {
        x: Vec::new(),
        obs_names: Vec::new(),
        var_names: var_names.to_vec(),
        obs: vec![(opts.pert_col.clone(), Vec::new()), (opts.cell_type_col.clone(), Vec::new())],
    };
    let (mut pred, mut real) = (empty(&names.genes), empty(&names.genes));
    let floor = if opts.unclamped { f32::NEG_INFINITY } else { 0.0 };
    let push = |a: &mut AnnData, rows: &[f32], name: String, pert: &str| {
        a.x.extend(rows.iter().map(|v| v.max(floor)));
        a.obs_names.push(name);
        a.obs[0].1.push(pert.to_string());
        a.obs[1].1.push(cell_type.clone());
    };
    let mut row = vec![0.0f32; store.n_genes()];
    for &cell in &fold.controls[fold.target] {
        store.expression_row(cell as usize, &mut row);
        push(&mut pred, &row, format!("control-{cell}"), &names.control);
        push(&mut real, &row, format!("control-{cell}"), &names.control);
    }
    let baselines = opts.baseline.map(|_| Baselines::fit(store, fold)).transpose()?;
    if let Some(b) = opts.baseline.filter(|b| b.needs_genept() && !store.has_genept()) {
        return Err(Error::invalid(
            "--baseline",
            format!("`{}` needs GenePT vectors; {} was prepared with --genept none", b.name(), store.dir.display()),
        ));
    }
    let mut rng = trainer.eval_rng();
    for cond in &fold.test {
        let pert = &names.perturbations[cond.perturbation as usize];
        let (p, r) = match (&baselines, opts.baseline) {
            (Some(b), Some(baseline)) => {
                let (mut real, mut paired) = (Vec::new(), Vec::new());
                for set in evaluation_sets(store, fold, cond, trainer.cfg.cells_per_set, &mut rng) {
                    let cells = set.values()?;
                    real.extend_from_slice(&cells.target);
                    paired.extend(cells.control.iter().map(|&v| v as f64));
                }
                let predicted = b.predict_cells(baseline, cond.perturbation, &paired);
                (predicted.iter().map(|&v| v as f32).collect::<Vec<f32>>(), real)
            }
            _ => {
                let (p, r, _) = trainer.predict_condition(cond, &mut rng)?;
                (p, r)
            }
        };
        for (i, (p, r)) in p.chunks(store.n_genes()).zip(r.chunks(store.n_genes())).enumerate() {
            push(&mut pred, p, format!("{pert}-{i}"), pert);
            push(&mut real, r, format!("{pert}-{i}"), pert);
        }
    }
    Ok((pred, real))
}

/// Writes `pred.h5ad` and `real.h5ad` per fold of `run_dir` into `out` (one subdirectory per cell
/// type for an `all` run); returns the pairs written.
pub fn predict_run(run_dir: &Path, out: &Path, opts: &PredictOptions, progress: bool) -> Result<Vec<(PathBuf, PathBuf)>> {
    let folds = fold_dirs(run_dir)?;
    let mut written = Vec::new();
    for dir in &folds {
        let run = TrainedRun::open(dir)?;
        let target = run.record.train.target_cell_type.clone();
        let fold_out = if folds.len() > 1 { out.join(crate::data::path_component(&target)?) } else { out.to_path_buf() };
        let set = OutputSet::begin(&fold_out, "predictions directory")?;
        if progress {
            match opts.baseline {
                Some(b) => eprintln!("predicting the {} baseline on {target}", b.name()),
                None => eprintln!("predicting {} on {target} from {}", run.record.train.model.kind.label(), run.checkpoint().display()),
            }
        }
        let trainer = run.trainer()?;
        let (pred, real) = fold_predictions(&run, &trainer, opts)?;
        let pca = super::report::fold_pca(&run.store, &trainer.fold, &super::report::EvalOptions::default());
        write_h5ad(&set.path("pred.h5ad"), &pred)?;
        write_h5ad_with_varm(&set.path("real.h5ad"), &real, &[("PCs", &pca.loadings())])?;
        written.push((set.final_path("pred.h5ad"), set.final_path("real.h5ad")));
        set.commit()?;
    }
    Ok(written)
}
