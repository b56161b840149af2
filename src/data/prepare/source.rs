//! What `prepare` reads from the file: the expression matrix and its gene names, the user's split
//! checked against the data, and the cells streamed a window at a time.

use super::cells::first_few;
use super::Normalize;
use crate::data::h5ad::{H5ad, Matrix};
use crate::data::split::SplitFile;
use crate::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Which matrix holds the expression: `auto`, `X`, `obsm:KEY`, `layers:KEY`.
pub(super) fn expression_matrix(f: &H5ad, path: &Path, spec: &str) -> Result<Matrix> {
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
pub(super) fn gene_names(f: &H5ad, path: &Path, matrix: &Matrix, column: Option<&str>) -> Result<Vec<String>> {
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
pub(super) fn checked_split(
    path: &Path,
    labels: &BTreeSet<String>,
    present: &dyn Fn(&str, &str) -> bool,
    cell_types: &[String],
    control: &str,
) -> Result<(SplitFile, usize)> {
    let mut split = SplitFile::read(path)?;
    let mut removed = 0;
    for (line, held) in split.fewshot.iter_mut() {
        let field = format!("fewshot.\"{}.{line}\"", split.dataset);
        let Some(cell_type) = cell_types.iter().find(|c| c.eq_ignore_ascii_case(line)) else {
            return Err(Error::bad_file(path, field, format!("a cell line of the data ({})", cell_types.join(", "))));
        };
        for (list, names) in [("val", &mut held.val), ("test", &mut held.test)] {
            // the control is every fold's basal population, never a held-out condition
            if names.iter().any(|n| n == control) {
                return Err(Error::bad_file(path, format!("{field}.{list}"), format!("perturbations other than the control `{control}`")));
            }
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

/// The kept cells of the file, streamed a window at a time: each cell's raw values checked
/// (finite, non-negative), then normalised.
pub(super) struct CellPass<'a> {
    pub f: &'a H5ad,
    pub path: &'a Path,
    pub matrix: &'a Matrix,
    pub obs_names: &'a [String],
    pub file_genes: &'a [String],
    pub keep: &'a [bool],
    pub normalize: Normalize,
    pub window: usize,
    pub progress: bool,
}

impl CellPass<'_> {
    /// Calls `visit(cell, normalised row)` for every kept cell, in order.
    pub fn for_each_kept_cell(&self, label: &str, visit: &mut dyn FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let n = self.obs_names.len();
        let window = self.window.max(1);
        let bar = crate::progress::bar(n as u64, label, self.progress);
        for lo in (0..n).step_by(window) {
            let count = window.min(n - lo);
            let mut rows = self.f.rows(self.matrix, lo, count)?;
            for (r, row) in rows.chunks_mut(self.file_genes.len()).enumerate() {
                let cell = lo + r;
                if let Some((g, v)) = row.iter().enumerate().find(|(_, v)| !v.is_finite() || **v < 0.0) {
                    let (obs, gene) = (&self.obs_names[cell], &self.file_genes[g]);
                    return Err(Error::bad_file(
                        self.path,
                        self.matrix.key(),
                        format!("finite, non-negative expression values; cell `{obs}` (row {cell}), gene `{gene}` has {v}"),
                    ));
                }
                if self.keep[cell] {
                    self.normalize.apply(row);
                    visit(cell, row)?;
                }
            }
            bar.inc(count as u64);
        }
        bar.finish_and_clear();
        Ok(())
    }
}
