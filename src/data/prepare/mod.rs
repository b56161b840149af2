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

mod cells;
mod export;
mod source;

pub use export::export;

use super::genept::GenePt;
use super::h5ad::{H5ad, Matrix};
use super::hvg::HvgAccumulator;
use super::split::{SplitFile, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION};
use super::store::{ExprDtype, Manifest, StoreWriter, FORMAT, VERSION};
use crate::{Error, Result};
use cells::{Kept, Obs};
use serde::Serialize;
use source::{checked_split, expression_matrix, gene_names, CellPass};
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
    /// What the store holds that is probably not what was meant (e.g. every value zero).
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// Whether every non-zero value of the first cells is an integer: raw counts.
pub(crate) fn looks_like_counts(rows: &[f32]) -> bool {
    rows.iter().any(|&v| v != 0.0) && rows.iter().all(|&v| v.is_finite() && v.fract() == 0.0)
}

pub fn prepare(opts: &PrepareOptions, progress: bool) -> Result<PrepareReport> {
    run(opts, progress, true)
}

/// Every check `prepare` makes, over the whole file in its bounded windows, without writing a
/// store (`inspect`'s "prepare would refuse this").
pub fn check(opts: &PrepareOptions) -> Result<PrepareReport> {
    run(opts, false, false)
}

fn run(opts: &PrepareOptions, progress: bool, write: bool) -> Result<PrepareReport> {
    let start = std::time::Instant::now();
    let path = opts.h5ad.as_path();
    if write && opts.out.exists() {
        return Err(Error::invalid("--out", format!("{} exists; choose another directory or remove it", opts.out.display())));
    }
    let f = H5ad::open(path)?;
    let obs = Obs::read(&f, path, opts)?;
    let matrix = expression_matrix(&f, path, &opts.expression)?;
    if matrix.rows() != obs.len() {
        return Err(Error::bad_file(path, matrix.key(), format!("{} rows, one per obs cell, found {}", obs.len(), matrix.rows())));
    }
    let file_genes = gene_names(&f, path, &matrix, opts.var_names.as_deref())?;
    // a window of dense rows (and its normalised copy) is held at once
    let window_bytes = 8.0 * opts.window.min(matrix.rows().max(1)) as f64 * file_genes.len() as f64;
    crate::machine::check_fits(window_bytes, || {
        format!("{} ({} genes, read {} cells at a time)", path.display(), file_genes.len(), opts.window)
    })?;
    let (normalize, values_found) = choose_normalize(&f, path, &matrix, opts.normalize)?;
    let genept = opts.genept.as_deref().map(GenePt::read).transpose()?;
    let kept = Kept::choose(&obs, genept.as_ref(), opts, path)?;
    let (split, split_note) = split_for(opts, path, &obs, &kept)?;
    let cells = CellPass {
        f: &f,
        path,
        matrix: &matrix,
        obs_names: &obs.names,
        file_genes: &file_genes,
        keep: &kept.keep,
        normalize,
        window: opts.window,
        progress,
    };
    let columns = gene_columns(&cells, opts.hvg)?;
    let genes: Vec<String> = columns.iter().map(|&g| file_genes[g].clone()).collect();
    let (writer, n_cells, nonzero) = write_cells(&cells, opts, &obs, &kept, &columns, &genes, write)?;
    let mut warnings = Vec::new();
    if nonzero == 0 {
        warnings.push(format!("every expression value of the {n_cells} kept cells is zero (an empty {}?)", matrix.key()));
    }
    let table = genept_table(genept.as_ref(), &kept.perturbations);

    let normalization = normalization_note(normalize, opts.hvg, genes.len());
    let embed_dim = genept.as_ref().map_or(0, |g| g.dim);
    let mut report = PrepareReport {
        store: opts.out.clone(),
        expression: matrix.key().to_string(),
        values_found,
        normalization: normalization.clone(),
        genes_in_file: file_genes.len(),
        cells: n_cells,
        genes: genes.len(),
        perturbations: kept.perturbations.len(),
        cell_types: kept.cell_types.iter().cloned().zip(kept.type_counts.iter().map(|c| c.0)).collect(),
        batches: kept.batch_labels.len(),
        embed_dim,
        genept_coverage: kept.coverage,
        dropped_cells: obs.len() - n_cells,
        dropped_perturbations: kept.without_genept.iter().cloned().collect(),
        dropped_labels: dropped_labels(opts, &obs),
        dropped_conditions: kept.dropped_conditions.clone(),
        perturbations_without_cells: kept.perturbations_without_cells.clone(),
        split: split_note,
        warnings,
        seconds: 0.0,
    };
    let genept_note = opts.genept.as_ref().map_or("none".to_string(), |p| p.display().to_string());
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        source: format!("h5ad {} expression={} normalization={normalization} genept={genept_note}", path.display(), matrix.key()),
        n_cells: 0,
        expression_dtype: opts.dtype,
        genes,
        perturbations: kept.perturbations,
        control: opts.control.clone(),
        cell_types: kept.cell_types,
        n_batches: kept.batch_labels.len(),
        embed_dim,
        fingerprint: None,
    };
    report.seconds = start.elapsed().as_secs_f64();
    let json = serde_json::to_string_pretty(&report).expect("report serialises");
    if let Some(writer) = writer {
        writer.finish(manifest, &table, &split.to_toml(), &[("prepare-report.json", json)])?;
    }
    Ok(report)
}

/// Raw counts or normalised values, told from the first cells, and what to do with them: raw
/// counts without `--normalize` are refused.
fn choose_normalize(f: &H5ad, path: &Path, matrix: &Matrix, given: Option<Normalize>) -> Result<(Normalize, String)> {
    let sample = matrix.rows().min(VALUE_SAMPLE_CELLS);
    let counts = looks_like_counts(&f.rows(matrix, 0, sample)?);
    let values_found = format!("{} in the first {sample} cells", if counts { "integer counts" } else { "non-integer values" });
    let normalize = match given {
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
    Ok((normalize, values_found))
}

/// The user's split checked against what is kept, or a generated one; and a note saying which.
fn split_for(opts: &PrepareOptions, path: &Path, obs: &Obs, kept: &Kept) -> Result<(SplitFile, String)> {
    match &opts.split {
        Some(s) => {
            let (split, removed) = checked_split(s, &obs.labels, &|p: &str, t: &str| kept.present(p, t), &kept.cell_types, &opts.control)?;
            Ok((split, format!("{} ({removed} names without cells in the store removed)", s.display())))
        }
        None => {
            let dataset = path.file_stem().and_then(|s| s.to_str()).unwrap_or("data").to_lowercase();
            let perturbations = &kept.perturbations[1..];
            let measured = |p: &str, t: &str| kept.present(p, t);
            let split = SplitFile::generate(
                &dataset,
                perturbations,
                &kept.cell_types,
                measured,
                DEFAULT_VAL_FRACTION,
                DEFAULT_TEST_FRACTION,
                opts.seed,
            )?;
            Ok((split, format!("generated (seed {}, the real files' proportions, from what each cell line measured)", opts.seed)))
        }
    }
}

/// The file's columns the store keeps: all, or with `--hvg` the highly variable genes, measured in
/// a first pass over the kept cells.
fn gene_columns(cells: &CellPass, hvg: Option<usize>) -> Result<Vec<usize>> {
    let n_file_genes = cells.file_genes.len();
    let Some(top) = hvg else { return Ok((0..n_file_genes).collect()) };
    let mut acc = HvgAccumulator::new(n_file_genes);
    cells.for_each_kept_cell("cells (highly variable genes)", &mut |_, row| {
        acc.push(row);
        Ok(())
    })?;
    Ok(acc.finish(top)?.selected())
}

/// Writes the kept cells' `columns` into a new store (`<out>.partial` until `finish`).
fn write_cells(
    cells: &CellPass,
    opts: &PrepareOptions,
    obs: &Obs,
    kept: &Kept,
    columns: &[usize],
    genes: &[String],
    write: bool,
) -> Result<(Option<StoreWriter>, usize, usize)> {
    let mut writer = if write { Some(StoreWriter::create_new(&opts.out, genes.len(), opts.dtype)?) } else { None };
    let (mut n_cells, mut nonzero) = (0, 0);
    let f16_max = half::f16::MAX.to_f32();
    let mut out_row = vec![0.0f32; genes.len()];
    cells.for_each_kept_cell("cells", &mut |cell, row| {
        for (o, &g) in out_row.iter_mut().zip(columns) {
            *o = row[g];
        }
        // An f16 store would hold a value beyond f16's range as infinity.
        if opts.dtype == ExprDtype::F16 {
            if let Some((g, v)) = out_row.iter().enumerate().find(|(_, v)| **v > f16_max) {
                let (name, gene) = (&obs.names[cell], &genes[g]);
                return Err(Error::bad_file(
                    cells.path,
                    cells.matrix.key(),
                    format!(
                        "values up to {f16_max} for an f16 store (or `prepare --dtype f32`, or `--normalize total-log1p` for raw counts); \
                         cell `{name}` (row {cell}), gene `{gene}` has {v}"
                    ),
                ));
            }
        }
        n_cells += 1;
        nonzero += out_row.iter().filter(|v| **v != 0.0).count();
        let Some(writer) = writer.as_mut() else { return Ok(()) };
        let p = kept.pert_index[obs.perts[cell].as_str()];
        writer.push_cell(&out_row, p, kept.type_index[obs.types[cell].as_str()], kept.batch_index[obs.batches[cell].as_str()])
    })?;
    Ok((writer, n_cells, nonzero))
}

/// One GenePT row per perturbation of the store (the control's zero; empty without GenePT).
fn genept_table(genept: Option<&GenePt>, perturbations: &[String]) -> Vec<f32> {
    let Some(genept) = genept else { return Vec::new() };
    let dim = genept.dim;
    let mut table = vec![0.0f32; perturbations.len() * dim];
    for (p, name) in perturbations.iter().enumerate().skip(1) {
        table[p * dim..(p + 1) * dim].copy_from_slice(genept.get(name).expect("kept perturbations have vectors"));
    }
    table
}

/// Each `--drop` label (sorted, once) and its cells.
fn dropped_labels(opts: &PrepareOptions, obs: &Obs) -> Vec<(String, usize)> {
    let labels: std::collections::BTreeSet<&String> = opts.drop.iter().collect();
    labels.into_iter().map(|d| (d.clone(), obs.perts.iter().filter(|p| *p == d).count())).collect()
}

fn normalization_note(normalize: Normalize, hvg: Option<usize>, genes: usize) -> String {
    let note = match normalize {
        Normalize::None => "none (stored as found)".to_string(),
        Normalize::TotalLog1p { target_sum } => format!("normalize_total to {target_sum} per cell, then log1p"),
    };
    note + &hvg.map_or(String::new(), |top| format!("; {genes} highly variable genes (seurat flavour, n_top_genes {top})"))
}
