//! `prepare`: a Replogle-Nadig-style `.h5ad`, a GenePT file and (optionally) a cell-load split
//! into the memory-mapped store that `synth` writes, so training never touches HDF5.
//!
//! Conventions of the store it writes (the same as `synth`'s, so a round trip is exact): genes in
//! the file's order; perturbations the control first, then by name; cell types in order of first
//! appearance; batches sorted (numerically when every label is an integer). Cells stream through
//! in windows, so memory stays bounded whatever the file size; every check that can fail runs
//! before or while writing into `<out>.partial`, which is renamed into place only at the end.

use super::genept::GenePt;
use super::h5ad::{H5ad, Matrix};
use super::split::{SplitFile, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION};
use super::store::{ExprDtype, Manifest, StoreWriter, FORMAT, VERSION};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub h5ad: PathBuf,
    pub genept: PathBuf,
    /// A cell-load few-shot split; without one, a seeded split with the real files' proportions.
    pub split: Option<PathBuf>,
    pub out: PathBuf,
    pub pert_col: String,
    pub cell_type_col: String,
    /// `None`: every cell in one batch.
    pub batch_col: Option<String>,
    pub control: String,
    /// `auto` (obsm `X_hvg` when present, else `X`), `X`, `obsm:KEY` or `layers:KEY`.
    pub expression: String,
    /// var column with the gene symbols; `None`: `gene_name` when present, else the index.
    pub var_names: Option<String>,
    pub dtype: ExprDtype,
    /// Seed of a generated split.
    pub seed: u64,
    /// Cells read per window.
    pub window: usize,
}

impl PrepareOptions {
    /// The Replogle-Nadig file's names (REFERENCE.md §3).
    pub fn new(h5ad: PathBuf, genept: PathBuf, out: PathBuf) -> Self {
        PrepareOptions {
            h5ad,
            genept,
            split: None,
            out,
            pert_col: "gene".into(),
            cell_type_col: "cell_line".into(),
            batch_col: Some("gem_group".into()),
            control: "non-targeting".into(),
            expression: "auto".into(),
            var_names: None,
            dtype: ExprDtype::F16,
            seed: 42,
            window: 4096,
        }
    }
}

/// What `prepare` did, also written into the store as `prepare-report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct PrepareReport {
    pub store: PathBuf,
    pub expression: String,
    pub cells: usize,
    pub genes: usize,
    pub perturbations: usize,
    pub cell_types: Vec<(String, usize)>,
    pub batches: usize,
    pub embed_dim: usize,
    /// Perturbations with a GenePT vector, of all non-control labels.
    pub genept_coverage: (usize, usize),
    /// Perturbations without a GenePT vector: dropped with their cells, from every split list.
    pub dropped_perturbations: Vec<String>,
    pub dropped_cells: usize,
    pub split: String,
    pub seconds: f64,
}

/// Sorted labels, numerically when all are integers.
fn sorted_labels(labels: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = labels.collect::<BTreeSet<_>>().into_iter().collect();
    if v.iter().all(|s| s.parse::<i64>().is_ok()) {
        v.sort_by_key(|s| s.parse::<i64>().expect("checked above"));
    }
    v
}

fn first_few(v: &[String]) -> String {
    let mut s = v.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 8 {
        s += &format!(", ... ({} in all)", v.len());
    }
    s
}

/// Which matrix holds the expression: `auto`, `X`, `obsm:KEY`, `layers:KEY`.
fn expression_matrix(f: &H5ad, path: &Path, spec: &str) -> Result<Matrix> {
    let key = match spec {
        "auto" => return f.matrix("obsm/X_hvg").or_else(|_| f.matrix("X")),
        "X" => "X".to_string(),
        s => match s.split_once(':') {
            Some(("obsm", k)) => format!("obsm/{k}"),
            Some(("layers", k)) => format!("layers/{k}"),
            _ => return Err(Error::bad_file(path, "--expression", format!("auto, X, obsm:KEY or layers:KEY, found `{s}`"))),
        },
    };
    f.matrix(&key)
}

/// Gene symbols for the matrix's columns: the var names, or for an obsm matrix with fewer
/// columns the var rows flagged `highly_variable`.
fn gene_names(f: &H5ad, path: &Path, matrix: &Matrix, column: Option<&str>) -> Result<Vec<String>> {
    let var_cols = f.columns("var")?;
    let names = match column {
        Some(c) => f.column("var", c)?,
        None if var_cols.iter().any(|c| c == "gene_name") => f.column("var", "gene_name")?,
        None => f.index("var")?,
    };
    let names = if names.len() == matrix.cols() {
        names
    } else if matrix.key().starts_with("obsm/") && var_cols.iter().any(|c| c == "highly_variable") {
        let flags = f.column("var", "highly_variable")?;
        let hvg: Vec<String> = names.into_iter().zip(flags).filter(|(_, h)| h == "True").map(|(n, _)| n).collect();
        if hvg.len() != matrix.cols() {
            return Err(Error::bad_file(
                path,
                "var/highly_variable",
                format!("{} genes flagged, one per column of {}; found {}", matrix.cols(), matrix.key(), hvg.len()),
            ));
        }
        hvg
    } else {
        return Err(Error::bad_file(
            path,
            "var",
            format!("one gene name per column of {} ({}), found {}", matrix.key(), matrix.cols(), names.len()),
        ));
    };
    let mut seen = HashMap::new();
    for (i, g) in names.iter().enumerate() {
        if let Some(j) = seen.insert(g.as_str(), i) {
            return Err(Error::bad_file(path, "var", format!("unique gene names; `{g}` is gene {j} and gene {i}")));
        }
    }
    Ok(names)
}

/// The user's split checked against the data, minus the dropped perturbations.
fn checked_split(path: &Path, labels: &BTreeSet<String>, dropped: &BTreeSet<String>, cell_types: &[String]) -> Result<(SplitFile, usize)> {
    let mut split = SplitFile::read(path)?;
    let mut removed = 0;
    for (line, held) in split.fewshot.iter_mut() {
        let field = format!("fewshot.\"{}.{line}\"", split.dataset);
        if !cell_types.iter().any(|c| c.eq_ignore_ascii_case(line)) {
            return Err(Error::bad_file(path, field, format!("a cell line of the data ({})", cell_types.join(", "))));
        }
        for (list, names) in [("val", &mut held.val), ("test", &mut held.test)] {
            let unknown: Vec<String> = names.iter().filter(|n| !labels.contains(*n)).cloned().collect();
            if !unknown.is_empty() {
                return Err(Error::bad_file(
                    path,
                    format!("{field}.{list}"),
                    format!("perturbations of the data; unknown: {}", first_few(&unknown)),
                ));
            }
            let before = names.len();
            names.retain(|n| !dropped.contains(n));
            removed += before - names.len();
        }
    }
    Ok((split, removed))
}

pub fn prepare(opts: &PrepareOptions, progress: bool) -> Result<PrepareReport> {
    let start = std::time::Instant::now();
    let path = opts.h5ad.as_path();
    if opts.out.exists() {
        return Err(Error::invalid("--out", format!("{} exists; choose another directory or remove it", opts.out.display())));
    }
    let f = H5ad::open(path)?;
    let obs_names = f.index("obs")?;
    let n = obs_names.len();
    let column = |name: &str| -> Result<Vec<String>> {
        let v = f.column("obs", name)?;
        if v.len() != n {
            return Err(Error::bad_file(path, format!("obs/{name}"), format!("{n} values, one per cell, found {}", v.len())));
        }
        Ok(v)
    };
    let perts = column(&opts.pert_col)?;
    let types = column(&opts.cell_type_col)?;
    let batches = match &opts.batch_col {
        Some(c) => column(c)?,
        None => vec!["0".to_string(); n],
    };
    let labels: BTreeSet<String> = perts.iter().cloned().collect();
    if !labels.contains(&opts.control) {
        let have: Vec<String> = labels.iter().cloned().collect();
        return Err(Error::bad_file(
            path,
            format!("obs/{}", opts.pert_col),
            format!("the control label `{}` (labels: {})", opts.control, first_few(&have)),
        ));
    }
    let mut by_upper: HashMap<String, &String> = HashMap::new();
    for l in &labels {
        if let Some(other) = by_upper.insert(l.to_uppercase(), l) {
            return Err(Error::bad_file(
                path,
                format!("obs/{}", opts.pert_col),
                format!("perturbations unique up to case; `{other}` and `{l}`"),
            ));
        }
    }

    let matrix = expression_matrix(&f, path, &opts.expression)?;
    if matrix.rows() != n {
        return Err(Error::bad_file(path, matrix.key(), format!("{n} rows, one per obs cell, found {}", matrix.rows())));
    }
    let genes = gene_names(&f, path, &matrix, opts.var_names.as_deref())?;

    let genept = GenePt::read(&opts.genept)?;
    let (mut kept, mut dropped) = (Vec::new(), BTreeSet::new());
    for l in labels.iter().filter(|l| **l != opts.control) {
        if genept.get(l).is_some() {
            kept.push(l.clone());
        } else {
            dropped.insert(l.clone());
        }
    }
    if kept.is_empty() {
        return Err(Error::bad_file(&opts.genept, "genes", format!("a vector for at least one perturbation of {}", path.display())));
    }
    let coverage = (kept.len(), labels.len() - 1);
    let mut perturbations = vec![opts.control.clone()];
    perturbations.extend(kept);
    let pert_index: HashMap<&str, u32> = perturbations.iter().enumerate().map(|(i, p)| (p.as_str(), i as u32)).collect();

    // Cell types (first appearance among kept cells), each with controls; batches.
    let keep: Vec<bool> = perts.iter().map(|p| pert_index.contains_key(p.as_str())).collect();
    let mut cell_types: Vec<String> = Vec::new();
    for (t, _) in types.iter().zip(&keep).filter(|(_, &k)| k) {
        if !cell_types.contains(t) {
            cell_types.push(t.clone());
        }
    }
    let type_index: HashMap<&str, u32> = cell_types.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
    let mut counts = vec![(0usize, 0usize); cell_types.len()];
    for ((p, t), _) in perts.iter().zip(&types).zip(&keep).filter(|(_, &k)| k) {
        let c = &mut counts[type_index[t.as_str()] as usize];
        c.0 += 1;
        c.1 += usize::from(*p == opts.control);
    }
    if let Some(i) = counts.iter().position(|c| c.1 == 0) {
        return Err(Error::bad_file(
            path,
            format!("obs/{}", opts.cell_type_col),
            format!("control cells (`{}`) in every cell type; `{}` has none", opts.control, cell_types[i]),
        ));
    }
    let batch_labels = sorted_labels(batches.iter().zip(&keep).filter(|(_, &k)| k).map(|(b, _)| b.clone()));
    let batch_index: HashMap<&str, u32> = batch_labels.iter().enumerate().map(|(i, b)| (b.as_str(), i as u32)).collect();

    let (split, split_note) = match &opts.split {
        Some(s) => {
            let (split, removed) = checked_split(s, &labels, &dropped, &cell_types)?;
            (split, format!("{} ({removed} names without a GenePT vector removed)", s.display()))
        }
        None => {
            let dataset = path.file_stem().and_then(|s| s.to_str()).unwrap_or("data").to_lowercase();
            let split =
                SplitFile::generate(&dataset, &perturbations[1..], &cell_types, DEFAULT_VAL_FRACTION, DEFAULT_TEST_FRACTION, opts.seed)?;
            (split, format!("generated (seed {}, the real files' proportions)", opts.seed))
        }
    };

    // Stream the cells: check every value, write the kept cells.
    let mut writer = StoreWriter::create(&opts.out, genes.len(), opts.dtype)?;
    let bar = crate::progress::bar(n as u64, "cells", progress);
    for lo in (0..n).step_by(opts.window.max(1)) {
        let count = opts.window.max(1).min(n - lo);
        let rows = f.rows(&matrix, lo, count)?;
        for (r, row) in rows.chunks(genes.len()).enumerate() {
            let cell = lo + r;
            // An f16 store would hold a value beyond f16's range as infinity.
            let f16_max = half::f16::MAX.to_f32();
            let limit = if opts.dtype == ExprDtype::F16 { f16_max } else { f32::MAX };
            if let Some((g, v)) = row.iter().enumerate().find(|(_, v)| !v.is_finite() || **v < 0.0 || **v > limit) {
                let expected = match v.is_finite() && *v > limit {
                    true => format!("values up to {f16_max} for an f16 store (or `prepare --dtype f32`)"),
                    false => "finite, non-negative log-normalised values".to_string(),
                };
                let (obs, gene) = (&obs_names[cell], &genes[g]);
                return Err(Error::bad_file(path, matrix.key(), format!("{expected}; cell `{obs}` (row {cell}), gene `{gene}` has {v}")));
            }
            if keep[cell] {
                let p = pert_index[perts[cell].as_str()];
                writer.push_cell(row, p, type_index[types[cell].as_str()], batch_index[batches[cell].as_str()])?;
            }
        }
        bar.inc(count as u64);
    }
    bar.finish_and_clear();

    let mut table = vec![0.0f32; perturbations.len() * genept.dim];
    for (p, name) in perturbations.iter().enumerate().skip(1) {
        table[p * genept.dim..(p + 1) * genept.dim].copy_from_slice(genept.get(name).expect("kept perturbations have vectors"));
    }
    let mut report = PrepareReport {
        store: opts.out.clone(),
        expression: matrix.key().to_string(),
        cells: writer.n_cells(),
        genes: genes.len(),
        perturbations: perturbations.len(),
        cell_types: cell_types.iter().cloned().zip(counts.iter().map(|c| c.0)).collect(),
        batches: batch_labels.len(),
        embed_dim: genept.dim,
        genept_coverage: coverage,
        dropped_cells: n - writer.n_cells(),
        dropped_perturbations: dropped.into_iter().collect(),
        split: split_note,
        seconds: 0.0,
    };
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        source: format!("h5ad {} expression={} genept={}", path.display(), matrix.key(), opts.genept.display()),
        n_cells: 0,
        expression_dtype: opts.dtype,
        genes,
        perturbations,
        control: opts.control.clone(),
        cell_types,
        n_batches: batch_labels.len(),
        embed_dim: genept.dim,
        fingerprint: None,
    };
    report.seconds = start.elapsed().as_secs_f64();
    let json = serde_json::to_string_pretty(&report).expect("report serialises");
    writer.finish(manifest, &table, &split.to_toml(), &[("prepare-report.json", json)])?;
    Ok(report)
}

/// The inverse of `prepare`, for moving a store (e.g. the built-in data) into other tools: writes
/// `data.h5ad` (X dense float32; obs `gene`, `cell_line`, `gem_group` categoricals), `genept.safetensors`
/// (one vector per perturbation, the control left out) and `split.toml` into `dir`. Holds the
/// expression in memory (the `.h5ad` is assembled whole).
pub fn export(store: &super::store::Store, dir: &Path) -> Result<Vec<PathBuf>> {
    use super::h5ad::{write_h5ad, AnnData};
    let m = &store.manifest;
    let (n, g, d) = (store.n_cells(), store.n_genes(), m.embed_dim);
    let paths = [dir.join("data.h5ad"), dir.join("genept.safetensors"), dir.join("split.toml")];
    // like `prepare`, never overwrite what is there
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        return Err(Error::invalid("--out", format!("{} exists; choose another directory or remove it", p.display())));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut x = vec![0.0f32; n * g];
    for (cell, row) in x.chunks_mut(g).enumerate() {
        store.expression_row(cell, row);
    }
    let (perts, types) = store.cell_labels();
    let a = AnnData {
        x,
        obs_names: (0..n).map(|i| format!("cell{i}")).collect(),
        var_names: m.genes.clone(),
        obs: vec![
            ("gene".into(), perts),
            ("cell_line".into(), types),
            ("gem_group".into(), store.cell_batch.iter().map(u32::to_string).collect()),
        ],
    };
    write_h5ad(&paths[0], &a)?;
    drop(a);

    let table = store.genept_table();
    let bytes: Vec<Vec<u8>> =
        (0..m.n_perturbations()).map(|p| table[p * d..(p + 1) * d].iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views = (1..m.n_perturbations()).map(|p| {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![d], &bytes[p]).expect("sizes match");
        (m.perturbations[p].clone(), view)
    });
    let st = safetensors::tensor::serialize(views, &None).map_err(|e| Error::invalid("GenePT export", e.to_string()))?;
    super::write_atomic(&paths[1], &st)?;
    let split = std::fs::read(&store.split_path).map_err(|e| Error::io(&store.split_path, e))?;
    super::write_atomic(&paths[2], &split)?;
    Ok(paths.to_vec())
}
