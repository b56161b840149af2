//! `inspect`: what is in an `.h5ad` or a dataset store, so users can check their data before
//! preparing or training: cells, genes, matrices, obs columns, perturbations and controls per cell
//! type, cells per perturbation, and the fraction of zeros.

use super::h5ad::H5ad;
use super::store::Store;
use crate::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Rows sampled for the fraction of zeros: windows of contiguous rows spread evenly over the
/// file (contiguous so that a compressed chunk is decompressed once, not once per row).
const SAMPLE_WINDOWS: usize = 20;
const WINDOW_ROWS: usize = 100;

/// At most this many values are sampled (64 MB of f32), however wide the matrix: a file declaring
/// millions of columns is inspected in bounded memory, on fewer rows.
const SAMPLE_VALUES: usize = 1 << 24;

/// The starts of the sampled windows over `n` rows of `cols` values, and the rows per window.
fn sample_windows(n: usize, cols: usize) -> (Vec<usize>, usize) {
    let affordable_rows = (SAMPLE_VALUES / cols.max(1)).max(1);
    let rows = WINDOW_ROWS.min(n).min(affordable_rows);
    let windows = SAMPLE_WINDOWS.min(affordable_rows / rows.max(1)).max(1);
    let step = (n / windows).max(rows).max(1);
    ((0..n.saturating_sub(rows) + 1).step_by(step).take(windows).collect(), rows)
}

/// Per cell type: cells, controls, distinct perturbations; then cells per (perturbation, type).
fn composition(perts: &[String], types: &[String], control: &str) -> String {
    let mut by_type: BTreeMap<&str, (usize, usize, BTreeSet<&str>)> = BTreeMap::new();
    let mut per_condition: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (p, t) in perts.iter().zip(types) {
        let e = by_type.entry(t).or_default();
        e.0 += 1;
        if p == control {
            e.1 += 1;
        } else {
            e.2.insert(p);
            *per_condition.entry((p, t)).or_default() += 1;
        }
    }
    let mut s = "cell type: cells, controls, perturbations\n".to_string();
    for (t, (cells, controls, ps)) in &by_type {
        s += &format!("  {t}: {cells} cells, {controls} controls, {} perturbations\n", ps.len());
    }
    let mut counts: Vec<usize> = per_condition.values().copied().collect();
    counts.sort_unstable();
    if let (Some(min), Some(max)) = (counts.first(), counts.last()) {
        s += &format!(
            "cells per (perturbation, cell type): min {min}, median {}, max {max} over {} conditions\n",
            counts[counts.len() / 2],
            counts.len()
        );
    }
    s
}

fn zero_fraction(rows: &[f32]) -> f64 {
    rows.iter().filter(|v| **v == 0.0).count() as f64 / rows.len().max(1) as f64
}

/// A summary of `path`: a store directory (with `manifest.json`) or an `.h5ad`, read with the
/// given obs column names and control label.
pub fn inspect(path: &Path, pert_col: &str, cell_type_col: &str, control: &str) -> Result<String> {
    if path.join("manifest.json").exists() {
        inspect_store(path)
    } else {
        inspect_h5ad(path, pert_col, cell_type_col, control)
    }
}

/// A store: its manifest, composition and share of zeros.
fn inspect_store(path: &Path) -> Result<String> {
    let store = Store::open(path)?;
    let m = &store.manifest;
    let mut s = format!(
        "store {} ({})\n{} cells x {} genes ({:?}), {} perturbations incl. control `{}`, {} batches, GenePT dim {}\n",
        path.display(),
        m.source,
        m.n_cells,
        m.n_genes(),
        m.expression_dtype,
        m.n_perturbations(),
        m.control,
        m.n_batches,
        m.embed_dim
    );
    let (perts, types) = store.cell_labels();
    s += &composition(&perts, &types, &m.control);
    let (starts, rows) = sample_windows(store.n_cells(), store.n_genes());
    let mut row = vec![0.0f32; store.n_genes()];
    let mut zeros = 0.0;
    for c in starts.iter().flat_map(|&s| s..s + rows) {
        store.expression_row(c, &mut row);
        zeros += zero_fraction(&row);
    }
    let sampled = starts.len() * rows;
    s += &format!("zeros: {:.1}% of values ({sampled} cells sampled)\n", 100.0 * zeros / sampled as f64);
    s += &match (&m.fingerprint, store.current_fingerprint()) {
        (None, _) => "fingerprint: none recorded (a store from before fingerprints), not checked\n".to_string(),
        (Some(was), now) if *was == now => format!("fingerprint {now}: every file holds the data it was written with\n"),
        (Some(was), now) => format!(
            "fingerprint: CHANGED: the manifest records {was}, the files now give {now}; a file was changed in place after \
             the store was written, and train, predict and evaluate refuse it\n"
        ),
    };
    Ok(s)
}

/// An `.h5ad`: its matrices, columns and composition, and what `prepare` would refuse.
fn inspect_h5ad(path: &Path, pert_col: &str, cell_type_col: &str, control: &str) -> Result<String> {
    let f = H5ad::open(path)?;
    let n = f.index("obs")?.len();
    let n_var = f.index("var")?.len();
    let mut s = format!("h5ad {}\n{n} cells, {n_var} var entries\n", path.display());
    // What `prepare` would refuse, said here rather than found there.
    if n == 0 {
        s += "prepare would refuse this file: it has no cells\n";
    }
    let x = f.members("/")?.contains(&"X".to_string()).then(|| "X".to_string());
    if x.is_none() {
        s += "X: absent (prepare needs X, or an obsm matrix named with --expression obsm:KEY)\n";
    }
    for key in x.into_iter().chain(f.members("obsm")?.into_iter().map(|k| format!("obsm/{k}"))) {
        s += &describe_matrix(&f, &key, n, n_var);
    }
    let columns = f.columns("obs")?;
    s += &format!("obs columns: {}\nvar columns: {}\n", columns.join(", "), f.columns("var")?.join(", "));
    if columns.iter().any(|c| c == pert_col) && columns.iter().any(|c| c == cell_type_col) {
        let (perts, types) = (f.column("obs", pert_col)?, f.column("obs", cell_type_col)?);
        s += &format!("perturbation column `{pert_col}`, cell type column `{cell_type_col}`, control `{control}`:\n");
        s += &composition(&perts, &types, control);
        if !perts.iter().any(|p| p == control) {
            s += &format!("warning: no cell has the control label `{control}` (set it with --control)\n");
        }
        // Every check of `prepare` itself, over the whole file, writing nothing.
        let batch_col = columns.iter().any(|c| c == "gem_group").then(|| "gem_group".to_string());
        let opts = crate::data::prepare::PrepareOptions {
            genept: None,
            pert_col: pert_col.to_string(),
            cell_type_col: cell_type_col.to_string(),
            batch_col,
            control: control.to_string(),
            ..crate::data::prepare::PrepareOptions::new(path.to_path_buf(), PathBuf::new(), PathBuf::new())
        };
        match crate::data::prepare::check(&opts) {
            Ok(r) => {
                s += &format!(
                    "prepare (--genept none{}) would accept it: {} cells x {} genes, {} perturbations, {} cell types ({})\n",
                    if opts.batch_col.is_some() { ", --batch-col gem_group" } else { ", --batch-col none" },
                    r.cells,
                    r.genes,
                    r.perturbations,
                    r.cell_types.len(),
                    r.values_found
                );
                s += &r.warnings.iter().map(|w| format!("warning: {w}\n")).collect::<String>();
            }
            Err(e) => s += &format!("prepare would refuse this: {e}\n"),
        }
    } else {
        s += &format!("(no `{pert_col}` and `{cell_type_col}` columns: name them with --pert-col and --cell-type-col)\n");
    }
    Ok(s)
}

/// One matrix of an `.h5ad`: its shape, storage and zeros over sampled rows, and what `prepare`
/// would refuse in it (`n` cells of obs, `n_var` genes of var).
fn describe_matrix(f: &H5ad, key: &str, n: usize, n_var: usize) -> String {
    let mut s = String::new();
    match f.matrix(key) {
        Ok(m) => {
            let kind = if matches!(m, super::h5ad::Matrix::Dense { .. }) { "dense" } else { "CSR" };
            let (starts, rows) = sample_windows(m.rows(), m.cols());
            let sampled_values: Result<Vec<f32>> = starts.iter().try_fold(Vec::new(), |mut all, &r| {
                all.extend(f.rows(&m, r, rows)?);
                Ok(all)
            });
            let sampled = starts.len() * rows;
            s += &match &sampled_values {
                Ok(v) => {
                    format!("{key}: {} x {} {kind}, {:.1}% zeros ({sampled} rows sampled)\n", m.rows(), m.cols(), 100.0 * zero_fraction(v))
                }
                Err(e) => format!("{key}: {} x {} {kind}, unreadable: prepare would refuse it ({e})\n", m.rows(), m.cols()),
            };
            if let Ok(v) = &sampled_values {
                if let Some(bad) = v.iter().find(|x| !x.is_finite() || **x < 0.0) {
                    s +=
                        &format!("prepare would refuse {key}: {bad} among the sampled values (finite, non-negative expression expected)\n");
                } else if super::prepare::looks_like_counts(v) {
                    s += &format!("{key} holds integer values (raw counts?): prepare needs --normalize total-log1p, or --normalize none to keep them\n");
                }
            }
            if m.rows() != n {
                s += &format!("prepare would refuse {key}: {} rows for the {n} cells of obs\n", m.rows());
            }
            if key == "X" && m.cols() != n_var {
                s += &format!("prepare would refuse X: {} columns for the {n_var} genes of var\n", m.cols());
            }
        }
        Err(e) => s += &format!("{key}: not a matrix this tool reads ({e})\n"),
    }
    s
}
