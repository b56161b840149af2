//! `evaluate --pred P.h5ad --real R.h5ad`: any tool's predictions scored with this engine's
//! metrics and statistics, from two files in cell-eval's input convention (GEARS, STATE or
//! `predict` output): the same genes in the same order, an obs column naming each cell's
//! perturbation (the control label marking control cells) and optionally one naming its cell
//! type. Every (perturbation, cell type) of the real file, its control excepted, is a condition;
//! the prediction must hold the same conditions with as many cells each.
//!
//! The metrics are `report::condition_metrics` against the real file's control cells of that cell
//! type, beside the one baseline that needs no training data (`control`: the real control cells
//! at the control mean; see `baselines`). The distributional metrics use the real file's PCA,
//! `varm/PCs` (scanpy's place for it; `predict` writes the run's there, fitted on training cells),
//! or without one a PCA fitted on the real file's cells. On `predict --unclamped` output every
//! metric then reproduces the run's `evaluate`.

use super::report::{condition_metrics, markdown, summarise, write_report, ConditionRow, EvalOptions, MeanInputs};
use crate::data::h5ad::{AnnData, H5ad};
use crate::data::output::OutputSet;
use crate::score::baselines::Baseline;
use crate::score::metrics::mean_rows;
use crate::score::pca::Pca;
use crate::{Error, Result};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct FilesOptions {
    pub pred: PathBuf,
    pub real: PathBuf,
    pub pert_col: String,
    /// `None`: every cell of one cell type.
    pub cell_type_col: Option<String>,
    pub control: String,
    /// The prediction's name in the report.
    pub name: String,
}

/// Cells grouped by (perturbation, cell type): row indices, in file order.
type Groups = BTreeMap<(String, String), Vec<usize>>;

/// A file's cells and their groups, and with `with_pca` its `varm/PCs` when it has one.
fn read(path: &Path, opts: &FilesOptions, with_pca: bool) -> Result<(AnnData, Groups, Option<Pca>)> {
    let f = H5ad::open(path)?;
    let mut cols = vec![opts.pert_col.as_str()];
    cols.extend(opts.cell_type_col.as_deref());
    let a = f.read(&cols)?;
    let mut groups = Groups::new();
    for i in 0..a.obs_names.len() {
        let cell_type = a.obs.get(1).map_or(String::new(), |c| c.1[i].clone());
        groups.entry((a.obs[0].1[i].clone(), cell_type)).or_default().push(i);
    }
    if let Some(v) = a.x.iter().find(|v| !v.is_finite()) {
        return Err(Error::bad_file(path, "X", format!("finite values, found {v}")));
    }
    let pca = if with_pca { stored_pca(&f, path, a.var_names.len())? } else { None };
    Ok((a, groups, pca))
}

fn rows(a: &AnnData, idx: &[usize]) -> Vec<f64> {
    let g = a.var_names.len();
    idx.iter().flat_map(|&i| a.x[i * g..(i + 1) * g].iter().map(|&v| v as f64)).collect()
}

fn condition_label(pert: &str, cell_type: &str) -> String {
    if cell_type.is_empty() {
        format!("`{pert}`")
    } else {
        format!("`{pert}` in `{cell_type}`")
    }
}

/// `varm/PCs` of an opened file (`[genes, components]`), when it has one.
fn stored_pca(f: &H5ad, path: &Path, genes: usize) -> Result<Option<Pca>> {
    if !(f.members("/")?.iter().any(|k| k == "varm") && f.members("varm")?.iter().any(|k| k == "PCs")) {
        return Ok(None);
    }
    let m = f.matrix("varm/PCs")?;
    if m.rows() != genes || m.cols() == 0 {
        return Err(Error::bad_file(
            path,
            "varm/PCs",
            format!("{genes} rows (one per gene) of loadings, found {} x {}", m.rows(), m.cols()),
        ));
    }
    let loadings = f.rows(&m, 0, m.rows())?;
    if loadings.iter().any(|v| !v.is_finite()) {
        return Err(Error::bad_file(path, "varm/PCs", "finite loadings"));
    }
    Ok(Some(Pca::from_loadings(&loadings, genes)))
}

/// The prediction must have the real file's genes in its order.
fn same_genes(pred: &AnnData, real: &AnnData, opts: &FilesOptions) -> Result<()> {
    if pred.var_names != real.var_names {
        let i =
            pred.var_names.iter().zip(&real.var_names).position(|(a, b)| a != b).unwrap_or(pred.var_names.len().min(real.var_names.len()));
        let (a, b) = (pred.var_names.get(i).map_or("nothing", |s| s), real.var_names.get(i).map_or("nothing", |s| s));
        return Err(Error::bad_file(
            &opts.pred,
            "var",
            format!(
                "the genes of {} in its order ({} genes); gene {i} is `{a}` here and `{b}` there ({} genes)",
                opts.real.display(),
                real.var_names.len(),
                pred.var_names.len()
            ),
        ));
    }
    Ok(())
}

/// Every condition of the prediction is in the real file, and every real condition is predicted
/// with as many cells.
fn same_conditions(pred_groups: &Groups, real_groups: &Groups, conditions: &[&(String, String)], opts: &FilesOptions) -> Result<()> {
    let pert_field = format!("obs/{}", opts.pert_col);
    for key in pred_groups.keys().filter(|(p, _)| *p != opts.control) {
        if !real_groups.contains_key(key) {
            return Err(Error::bad_file(
                &opts.real,
                &pert_field,
                format!("{} of {}, which has none here", condition_label(&key.0, &key.1), opts.pred.display()),
            ));
        }
    }
    for key in conditions {
        let (n_pred, n_real) = (pred_groups.get(*key).map_or(0, Vec::len), real_groups[*key].len());
        if n_pred == 0 {
            return Err(Error::bad_file(
                &opts.pred,
                &pert_field,
                format!("predicted cells of {}, which {} has", condition_label(&key.0, &key.1), opts.real.display()),
            ));
        }
        if n_pred != n_real {
            return Err(Error::bad_file(
                &opts.pred,
                &pert_field,
                format!("as many predicted as real cells of {} ({n_real}), found {n_pred}", condition_label(&key.0, &key.1)),
            ));
        }
    }
    Ok(())
}

/// Per-condition rows of the prediction and of the `control` baseline, and what the PCA was
/// fitted on (as the report says it).
pub fn evaluate_files(opts: &FilesOptions, eval: &EvalOptions) -> Result<(Vec<ConditionRow>, &'static str)> {
    let (pred, pred_groups, _) = read(&opts.pred, opts, false)?;
    let (real, real_groups, real_pca) = read(&opts.real, opts, true)?;
    same_genes(&pred, &real, opts)?;
    let g = real.var_names.len();
    let pert_field = format!("obs/{}", opts.pert_col);
    let cell_types: std::collections::BTreeSet<&String> = real_groups.keys().map(|(_, t)| t).collect();
    let mut controls = BTreeMap::new();
    for t in &cell_types {
        let idx = real_groups.get(&(opts.control.clone(), (*t).clone())).ok_or_else(|| {
            let what = if t.is_empty() { String::new() } else { format!(" of cell type `{t}`") };
            Error::bad_file(&opts.real, &pert_field, format!("control cells{what} labelled `{}`", opts.control))
        })?;
        controls.insert((*t).clone(), rows(&real, idx));
    }
    let conditions: Vec<&(String, String)> = real_groups.keys().filter(|(p, _)| *p != opts.control).collect();
    if conditions.is_empty() {
        return Err(Error::bad_file(&opts.real, &pert_field, format!("perturbed cells besides the control `{}`", opts.control)));
    }
    same_conditions(&pred_groups, &real_groups, &conditions, opts)?;

    // The PCA: the real file's own (`varm/PCs`, as scanpy and `predict` write it), else fitted on
    // (a sample of) its cells.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x9CA);
    let (pca, fitted_on) = match real_pca {
        Some(pca) => (pca, "training cells (the run's, from the real file's varm/PCs)"),
        None => {
            let n_real = real.obs_names.len();
            let sample: Vec<usize> = (0..eval.pca_cells.min(n_real)).map(|_| rng.gen_range(0..n_real)).collect();
            (Pca::fit(&rows(&real, &sample), g, eval.pca_components), "the real file's cells")
        }
    };

    let mut out = Vec::new();
    for key in conditions {
        let (pert, cell_type) = key;
        let real_cells = rows(&real, &real_groups[key]);
        let pred_cells = rows(&pred, &pred_groups[key]);
        let ctrl = &controls[cell_type];
        let label = if cell_type.is_empty() { "all".to_string() } else { cell_type.clone() };
        let row = |model: &str, values: Vec<f64>| ConditionRow {
            model: model.to_string(),
            target: label.clone(),
            perturbation: pert.clone(),
            cell_type: label.clone(),
            cells: real_groups[key].len(),
            values,
        };
        out.push(row(&opts.name, condition_metrics(&pred_cells, &real_cells, ctrl, g, &pca, eval, MeanInputs::default())?));
        // `control`: as many control cells drawn at random, moved to the control mean.
        let n_ctrl = ctrl.len() / g;
        let ctrl_mean = mean_rows(ctrl, g);
        let drawn: Vec<f64> = (0..real_groups[key].len()).flat_map(|_| ctrl[rng.gen_range(0..n_ctrl) * g..][..g].to_vec()).collect();
        let drawn_mean = mean_rows(&drawn, g);
        let baseline: Vec<f64> =
            drawn.chunks(g).flat_map(|r| r.iter().zip(&ctrl_mean).zip(&drawn_mean).map(|((x, c), m)| x + c - m)).collect();
        out.push(row(Baseline::Control.name(), condition_metrics(&baseline, &real_cells, ctrl, g, &pca, eval, MeanInputs::default())?));
    }
    Ok((out, fitted_on))
}

/// `evaluate --pred --real` end to end: the report files in `out` (as `evaluate` writes them);
/// returns the overall table and the prediction against the `control` baseline.
pub fn evaluate_files_into(opts: &FilesOptions, eval: &EvalOptions, out: &Path) -> Result<String> {
    let set = OutputSet::begin(out, "report directory")?;
    let (rows, fitted_on) = evaluate_files(opts, eval)?;
    let eval = &EvalOptions { pca_fitted_on: fitted_on, ..eval.clone() };
    let summary = summarise(&rows);
    write_report(&rows, &summary, None, &[], eval, &set)?;
    set.commit()?;
    let md = markdown(&summary, eval);
    let mut parts = md.split("\n## ");
    let table = parts.next().unwrap_or_default().to_string();
    let against = parts.find(|p| p.starts_with("Each model against")).map_or(String::new(), |p| format!("\n## {p}"));
    Ok(table + &against)
}
