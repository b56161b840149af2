//! `prepare`: a Replogle-Nadig-style `.h5ad`, a GenePT file and (optionally) a cell-load split
//! into the memory-mapped store that `synth` writes, so training never touches HDF5.
//!
//! Conventions of the store it writes (the same as `synth`'s, so a round trip is exact): genes in
//! the file's order; perturbations the control first, then by name; cell types in order of first
//! appearance; batches sorted (numerically when every label is an integer). Cells stream through
//! in windows, so memory stays bounded whatever the file size; every check that can fail runs
//! before or while writing into `<out>.partial`, which is renamed into place only at the end.
//!
//! Raw counts (the usual Cell Ranger / Perturb-seq file) are recognised by their integer values
//! and refused unless `--normalize` says what to do: `total-log1p` is scanpy's `normalize_total`
//! (each cell scaled to a target sum, 1e4 by default) then `log1p`, computed in float32 as scanpy
//! does; `--hvg N` then keeps scanpy's seurat-flavour highly variable genes (`hvg.rs`), measured
//! in a first streaming pass over the kept cells.

use super::genept::GenePt;
use super::h5ad::{H5ad, Matrix};
use super::hvg::HvgAccumulator;
use super::split::{SplitFile, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION};
use super::store::{ExprDtype, Manifest, StoreWriter, FORMAT, VERSION};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub h5ad: PathBuf,
    /// `None` (`--genept none`): a store without GenePT vectors, for STATE only.
    pub genept: Option<PathBuf>,
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
    /// What to do with the values: `None` (not given) refuses raw counts and takes anything else as
    /// it is.
    pub normalize: Option<Normalize>,
    /// Keep only this many highly variable genes (scanpy's seurat flavour).
    pub hvg: Option<usize>,
    /// Perturbation labels whose cells are left out (e.g. `unassigned`, `multiple`).
    pub drop: Vec<String>,
    /// Conditions (perturbation, cell type) with fewer cells are left out; controls are kept.
    pub min_cells: usize,
}

/// `--normalize`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Normalize {
    /// The values as they are (already log-normalised, or raw counts on purpose).
    None,
    /// scanpy's `normalize_total(target_sum)` then `log1p`.
    TotalLog1p { target_sum: f32 },
}

/// scanpy's customary target sum, and ours.
pub const DEFAULT_TARGET_SUM: f32 = 1e4;

impl Normalize {
    pub fn parse(name: &str, target_sum: f32) -> Result<Normalize> {
        match name {
            "none" => Ok(Normalize::None),
            "total-log1p" if target_sum > 0.0 && target_sum.is_finite() => Ok(Normalize::TotalLog1p { target_sum }),
            "total-log1p" => Err(Error::invalid("--target-sum", format!("a positive number, found {target_sum}"))),
            other => Err(Error::invalid("--normalize", format!("none or total-log1p, found `{other}`"))),
        }
    }

    /// Normalises one cell in place: `x / (total / target_sum)` then `log1p`, in float32 as scanpy
    /// computes it (a cell with no counts stays zero).
    pub fn apply(self, row: &mut [f32]) {
        if let Normalize::TotalLog1p { target_sum } = self {
            let total: f64 = row.iter().map(|&v| v as f64).sum();
            let scale = if total > 0.0 { (total / target_sum as f64) as f32 } else { 1.0 };
            row.iter_mut().for_each(|v| *v = (*v / scale).ln_1p());
        }
    }
}

/// Cells looked at to tell raw counts from normalised values.
const VALUE_SAMPLE_CELLS: usize = 1000;

impl PrepareOptions {
    /// The Replogle-Nadig file's column names and control label.
    pub fn new(h5ad: PathBuf, genept: PathBuf, out: PathBuf) -> Self {
        PrepareOptions {
            h5ad,
            genept: Some(genept),
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
            normalize: None,
            hvg: None,
            drop: Vec::new(),
            min_cells: 0,
        }
    }
}

/// What `prepare` did, also written into the store as `prepare-report.json`.
#[derive(Clone, Debug, Serialize)]
pub struct PrepareReport {
    pub store: PathBuf,
    pub expression: String,
    /// What the values looked like (`integer counts` or `non-integer values`, from the first cells).
    pub values_found: String,
    /// What was done to them.
    pub normalization: String,
    /// Genes of the file, and with `--hvg` how many were kept.
    pub genes_in_file: usize,
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
    /// `--drop` labels and their cells.
    pub dropped_labels: Vec<(String, usize)>,
    /// Conditions below `--min-cells`: perturbation, cell type, cells.
    pub dropped_conditions: Vec<(String, String, usize)>,
    /// Perturbations left with no cells at all after `--min-cells`, removed from the store.
    pub perturbations_without_cells: Vec<String>,
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

/// The user's split checked against the data, minus what is not in the store: perturbations
/// dropped everywhere, and names whose condition in that cell line has no cells left (`present`).
fn checked_split(
    path: &Path,
    labels: &BTreeSet<String>,
    present: &dyn Fn(&str, &str) -> bool,
    cell_types: &[String],
) -> Result<(SplitFile, usize)> {
    let mut split = SplitFile::read(path)?;
    let mut removed = 0;
    for (line, held) in split.fewshot.iter_mut() {
        let field = format!("fewshot.\"{}.{line}\"", split.dataset);
        let Some(cell_type) = cell_types.iter().find(|c| c.eq_ignore_ascii_case(line)) else {
            return Err(Error::bad_file(path, field, format!("a cell line of the data ({})", cell_types.join(", "))));
        };
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
            names.retain(|n| present(n, cell_type));
            removed += before - names.len();
        }
        if held.test.is_empty() {
            return Err(Error::bad_file(
                path,
                format!("{field}.test"),
                "test perturbations with cells in the store; every one was dropped (no GenePT vector, --drop or --min-cells)",
            ));
        }
    }
    Ok((split, removed))
}

/// Whether every non-zero value of the first cells is an integer: raw counts.
pub(crate) fn looks_like_counts(rows: &[f32]) -> bool {
    rows.iter().any(|&v| v != 0.0) && rows.iter().all(|&v| v.is_finite() && v.fract() == 0.0)
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
    let pert_field = format!("obs/{}", opts.pert_col);
    if !labels.contains(&opts.control) {
        let have: Vec<String> = labels.iter().cloned().collect();
        return Err(Error::bad_file(path, &pert_field, format!("the control label `{}` (labels: {})", opts.control, first_few(&have))));
    }
    let mut by_upper: HashMap<String, &String> = HashMap::new();
    for l in &labels {
        if let Some(other) = by_upper.insert(l.to_uppercase(), l) {
            return Err(Error::bad_file(path, &pert_field, format!("perturbations unique up to case; `{other}` and `{l}`")));
        }
    }
    for d in &opts.drop {
        if *d == opts.control {
            return Err(Error::invalid("--drop", format!("labels other than the control `{d}`")));
        }
        if !labels.contains(d) {
            let have: Vec<String> = labels.iter().cloned().collect();
            return Err(Error::bad_file(path, &pert_field, format!("the --drop label `{d}` (labels: {})", first_few(&have))));
        }
    }

    let matrix = expression_matrix(&f, path, &opts.expression)?;
    if matrix.rows() != n {
        return Err(Error::bad_file(path, matrix.key(), format!("{n} rows, one per obs cell, found {}", matrix.rows())));
    }
    let file_genes = gene_names(&f, path, &matrix, opts.var_names.as_deref())?;
    let n_file_genes = file_genes.len();

    // Raw counts or normalised values, from the first cells.
    let counts = looks_like_counts(&f.rows(&matrix, 0, n.min(VALUE_SAMPLE_CELLS))?);
    let values_found =
        format!("{} in the first {} cells", if counts { "integer counts" } else { "non-integer values" }, n.min(VALUE_SAMPLE_CELLS));
    let normalize = match opts.normalize {
        Some(x) => x,
        None if counts => {
            return Err(Error::bad_file(
                path,
                matrix.key(),
                format!(
                    "log-normalised expression, found {values_found} (raw counts?); give `--normalize total-log1p` \
                     (scanpy's normalize_total to {DEFAULT_TARGET_SUM:.0} + log1p), or `--normalize none` to store them as they are"
                ),
            ))
        }
        None => Normalize::None,
    };

    // Perturbations: the control first, then those with a GenePT vector (all without --genept none).
    let genept = opts.genept.as_deref().map(GenePt::read).transpose()?;
    let drop: BTreeSet<&str> = opts.drop.iter().map(String::as_str).collect();
    let (mut kept, mut dropped) = (Vec::new(), BTreeSet::new());
    for l in labels.iter().filter(|l| **l != opts.control && !drop.contains(l.as_str())) {
        if genept.as_ref().is_none_or(|g| g.get(l).is_some()) {
            kept.push(l.clone());
        } else {
            dropped.insert(l.clone());
        }
    }
    if let (Some(file), true) = (&opts.genept, kept.is_empty()) {
        return Err(Error::bad_file(file, "genes", format!("a vector for at least one perturbation of {}", path.display())));
    }
    let coverage = (kept.len(), labels.len() - 1 - drop.len());

    // Conditions below --min-cells (controls excepted), and perturbations left with no cells.
    let mut condition_cells: HashMap<(&str, &str), usize> = HashMap::new();
    for (p, t) in perts.iter().zip(&types) {
        *condition_cells.entry((p.as_str(), t.as_str())).or_default() += 1;
    }
    let mut dropped_conditions: Vec<(String, String, usize)> = condition_cells
        .iter()
        .filter(|((p, _), &c)| *p != opts.control && c < opts.min_cells && kept.binary_search_by(|k| k.as_str().cmp(p)).is_ok())
        .map(|((p, t), &c)| (p.to_string(), t.to_string(), c))
        .collect();
    dropped_conditions.sort();
    let small: BTreeSet<(&str, &str)> = dropped_conditions.iter().map(|(p, t, _)| (p.as_str(), t.as_str())).collect();
    let with_cells: BTreeSet<&str> = condition_cells.keys().filter(|k| !small.contains(k)).map(|(p, _)| *p).collect();
    let perturbations_without_cells: Vec<String> = kept.iter().filter(|p| !with_cells.contains(p.as_str())).cloned().collect();
    kept.retain(|p| with_cells.contains(p.as_str()));
    if kept.is_empty() {
        return Err(Error::invalid("--min-cells", format!("leaves no perturbation with {} or more cells", opts.min_cells)));
    }
    let mut perturbations = vec![opts.control.clone()];
    perturbations.extend(kept);
    let pert_index: HashMap<&str, u32> = perturbations.iter().enumerate().map(|(i, p)| (p.as_str(), i as u32)).collect();

    // Cell types (first appearance among kept cells), each with controls; batches.
    let keep: Vec<bool> =
        perts.iter().zip(&types).map(|(p, t)| pert_index.contains_key(p.as_str()) && !small.contains(&(p.as_str(), t.as_str()))).collect();
    let mut cell_types: Vec<String> = Vec::new();
    for (t, _) in types.iter().zip(&keep).filter(|(_, &k)| k) {
        if !cell_types.contains(t) {
            cell_types.push(t.clone());
        }
    }
    let type_index: HashMap<&str, u32> = cell_types.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
    let mut type_counts = vec![(0usize, 0usize); cell_types.len()];
    for ((p, t), _) in perts.iter().zip(&types).zip(&keep).filter(|(_, &k)| k) {
        let c = &mut type_counts[type_index[t.as_str()] as usize];
        c.0 += 1;
        c.1 += usize::from(*p == opts.control);
    }
    if let Some(i) = type_counts.iter().position(|c| c.1 == 0) {
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
            let present = |p: &str, t: &str| pert_index.contains_key(p) && !small.contains(&(p, t));
            let (split, removed) = checked_split(s, &labels, &present, &cell_types)?;
            (split, format!("{} ({removed} names without cells in the store removed)", s.display()))
        }
        None => {
            let dataset = path.file_stem().and_then(|s| s.to_str()).unwrap_or("data").to_lowercase();
            let split =
                SplitFile::generate(&dataset, &perturbations[1..], &cell_types, DEFAULT_VAL_FRACTION, DEFAULT_TEST_FRACTION, opts.seed)?;
            (split, format!("generated (seed {}, the real files' proportions)", opts.seed))
        }
    };

    // Each cell's raw values checked, then normalised; a window at a time.
    let window = opts.window.max(1);
    let for_each_kept_cell = |label: &str, visit: &mut dyn FnMut(usize, &[f32]) -> Result<()>| -> Result<()> {
        let bar = crate::progress::bar(n as u64, label, progress);
        for lo in (0..n).step_by(window) {
            let count = window.min(n - lo);
            let mut rows = f.rows(&matrix, lo, count)?;
            for (r, row) in rows.chunks_mut(n_file_genes).enumerate() {
                let cell = lo + r;
                if let Some((g, v)) = row.iter().enumerate().find(|(_, v)| !v.is_finite() || **v < 0.0) {
                    let (obs, gene) = (&obs_names[cell], &file_genes[g]);
                    return Err(Error::bad_file(
                        path,
                        matrix.key(),
                        format!("finite, non-negative expression values; cell `{obs}` (row {cell}), gene `{gene}` has {v}"),
                    ));
                }
                if keep[cell] {
                    normalize.apply(row);
                    visit(cell, row)?;
                }
            }
            bar.inc(count as u64);
        }
        bar.finish_and_clear();
        Ok(())
    };

    // --hvg: a first pass measures every gene over the kept cells.
    let columns: Vec<usize> = match opts.hvg {
        None => (0..n_file_genes).collect(),
        Some(top) => {
            let mut acc = HvgAccumulator::new(n_file_genes);
            for_each_kept_cell("cells (highly variable genes)", &mut |_, row| {
                acc.push(row);
                Ok(())
            })?;
            acc.finish(top)?.selected()
        }
    };
    let genes: Vec<String> = columns.iter().map(|&g| file_genes[g].clone()).collect();

    // Write the kept cells.
    let mut writer = StoreWriter::create(&opts.out, genes.len(), opts.dtype)?;
    let f16_max = half::f16::MAX.to_f32();
    let mut out_row = vec![0.0f32; genes.len()];
    for_each_kept_cell("cells", &mut |cell, row| {
        for (o, &g) in out_row.iter_mut().zip(&columns) {
            *o = row[g];
        }
        // An f16 store would hold a value beyond f16's range as infinity.
        if opts.dtype == ExprDtype::F16 {
            if let Some((g, v)) = out_row.iter().enumerate().find(|(_, v)| **v > f16_max) {
                let (obs, gene) = (&obs_names[cell], &genes[g]);
                return Err(Error::bad_file(
                    path,
                    matrix.key(),
                    format!(
                        "values up to {f16_max} for an f16 store (or `prepare --dtype f32`, or `--normalize total-log1p` for raw counts); \
                         cell `{obs}` (row {cell}), gene `{gene}` has {v}"
                    ),
                ));
            }
        }
        let p = pert_index[perts[cell].as_str()];
        writer.push_cell(&out_row, p, type_index[types[cell].as_str()], batch_index[batches[cell].as_str()])
    })?;

    let embed_dim = genept.as_ref().map_or(0, |g| g.dim);
    let mut table = vec![0.0f32; perturbations.len() * embed_dim];
    if let Some(genept) = &genept {
        for (p, name) in perturbations.iter().enumerate().skip(1) {
            table[p * embed_dim..(p + 1) * embed_dim].copy_from_slice(genept.get(name).expect("kept perturbations have vectors"));
        }
    }
    let dropped_labels = drop.iter().map(|d| (d.to_string(), perts.iter().filter(|p| p == d).count())).collect();
    let normalization =
        match normalize {
            Normalize::None => "none (stored as found)".to_string(),
            Normalize::TotalLog1p { target_sum } => format!("normalize_total to {target_sum} per cell, then log1p"),
        } + &opts.hvg.map_or(String::new(), |top| format!("; {} highly variable genes (seurat flavour, n_top_genes {top})", genes.len()));
    let genept_note = opts.genept.as_ref().map_or("none".to_string(), |p| p.display().to_string());
    let mut report = PrepareReport {
        store: opts.out.clone(),
        expression: matrix.key().to_string(),
        values_found,
        normalization: normalization.clone(),
        genes_in_file: n_file_genes,
        cells: writer.n_cells(),
        genes: genes.len(),
        perturbations: perturbations.len(),
        cell_types: cell_types.iter().cloned().zip(type_counts.iter().map(|c| c.0)).collect(),
        batches: batch_labels.len(),
        embed_dim,
        genept_coverage: coverage,
        dropped_cells: n - writer.n_cells(),
        dropped_perturbations: dropped.into_iter().collect(),
        dropped_labels,
        dropped_conditions,
        perturbations_without_cells,
        split: split_note,
        seconds: 0.0,
    };
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        source: format!("h5ad {} expression={} normalization={normalization} genept={genept_note}", path.display(), matrix.key()),
        n_cells: 0,
        expression_dtype: opts.dtype,
        genes,
        perturbations,
        control: opts.control.clone(),
        cell_types,
        n_batches: batch_labels.len(),
        embed_dim,
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
        // a store's writer never stores these; a damaged expression.bin can hold them
        if let Some(gene) = row.iter().position(|v| !v.is_finite()) {
            return Err(Error::bad_file(
                store.dir.join("expression.bin"),
                "expression",
                format!("finite values; cell {cell}, gene `{}` has {}", m.genes[gene], row[gene]),
            ));
        }
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
