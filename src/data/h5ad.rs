//! AnnData `.h5ad` files, read and written through `hdf5-pure`, a pure-Rust HDF5 implementation:
//! no C library to find or build, so a fresh machine needs nothing beyond cargo.
//!
//! The writer produces the layout anndata (>= 0.8) writes and reads: dense `X` (float32), `obs`
//! and `var` dataframes with string indices and categorical columns (`categories` + the narrowest
//! signed `codes`), and the empty `obsm`, `varm`, `obsp`, `varp`, `layers` and `uns` dictionaries.
//! The reader takes those, plain string columns, and dense matrices in row windows.

use crate::{Error, Result};
use hdf5_pure::{AttrValue, DType, File, FileBuilder, GroupBuilder};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The widest matrix read (a gene count far beyond any transcriptome's): a file declaring more is
/// refused before anything is allocated for its rows.
pub const MAX_COLUMNS: usize = 10_000_000;

/// An in-memory AnnData with a dense expression matrix and string-valued obs columns.
#[derive(Clone, Debug, PartialEq)]
pub struct AnnData {
    /// `[obs_names.len(), var_names.len()]`, row-major.
    pub x: Vec<f32>,
    pub obs_names: Vec<String>,
    pub var_names: Vec<String>,
    /// (column, value per cell), written as categoricals in this order.
    pub obs: Vec<(String, Vec<String>)>,
}

/// The two attributes by which anndata knows what an element is.
fn encoding(kind: &str, version: &str) -> [(&'static str, AttrValue); 2] {
    [("encoding-type", AttrValue::String(kind.into())), ("encoding-version", AttrValue::String(version.into()))]
}

fn string_array(group: &mut GroupBuilder, name: &str, values: &[String]) {
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let ds = group.create_dataset(name).with_vlen_strings(&refs);
    for (k, v) in encoding("string-array", "0.2.0") {
        ds.set_attr(k, v);
    }
}

/// A categorical column as pandas makes it: sorted unique categories, codes in the narrowest type.
fn categorical(group: &mut GroupBuilder, name: &str, values: &[String]) {
    let categories: Vec<String> = values.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    let code = |v: &String| categories.binary_search(v).expect("a value is among its own categories");
    let mut col = group.create_group(name);
    for (k, v) in encoding("categorical", "0.2.0") {
        col.set_attr(k, v);
    }
    col.set_attr("ordered", AttrValue::U8(0));
    let codes = col.create_dataset("codes");
    match categories.len() {
        n if n <= i8::MAX as usize => codes.with_i8_data(&values.iter().map(|v| code(v) as i8).collect::<Vec<_>>()),
        n if n <= i16::MAX as usize => codes.with_i16_data(&values.iter().map(|v| code(v) as i16).collect::<Vec<_>>()),
        _ => codes.with_i32_data(&values.iter().map(|v| code(v) as i32).collect::<Vec<_>>()),
    };
    for (k, v) in encoding("array", "0.2.0") {
        codes.set_attr(k, v);
    }
    string_array(&mut col, "categories", &categories);
    group.add_group(col.finish());
}

fn dataframe(b: &mut FileBuilder, name: &str, index: &[String], columns: &[(String, Vec<String>)]) {
    let mut df = b.create_group(name);
    for (k, v) in encoding("dataframe", "0.2.0") {
        df.set_attr(k, v);
    }
    df.set_attr("_index", AttrValue::String("_index".into()));
    df.set_attr("column-order", AttrValue::StringArray(columns.iter().map(|c| c.0.clone()).collect()));
    string_array(&mut df, "_index", index);
    for (col, values) in columns {
        categorical(&mut df, col, values);
    }
    b.add_group(df.finish());
}

/// Writes `a` to `path` atomically (a temporary sibling, then a rename).
pub fn write_h5ad(path: &Path, a: &AnnData) -> Result<()> {
    write_h5ad_with_varm(path, a, &[])
}

/// `write_h5ad` with dense float32 `varm` matrices: (name, `[genes, columns]` row-major).
pub fn write_h5ad_with_varm(path: &Path, a: &AnnData, varm: &[(&str, &[f32])]) -> Result<()> {
    let (n, g) = (a.obs_names.len(), a.var_names.len());
    if a.x.len() != n * g {
        return Err(Error::invalid("AnnData", format!("X has {} values for {n} cells x {g} genes", a.x.len())));
    }
    if let Some((col, v)) = a.obs.iter().find(|(_, v)| v.len() != n) {
        return Err(Error::invalid("AnnData", format!("obs column `{col}` has {} values for {n} cells", v.len())));
    }
    let mut b = FileBuilder::new();
    for (k, v) in encoding("anndata", "0.1.0") {
        b.set_attr(k, v);
    }
    let x = b.create_dataset("X").with_f32_data(&a.x).with_shape(&[n as u64, g as u64]);
    for (k, v) in encoding("array", "0.2.0") {
        x.set_attr(k, v);
    }
    dataframe(&mut b, "obs", &a.obs_names, &a.obs);
    dataframe(&mut b, "var", &a.var_names, &[]);
    for name in ["obsm", "varm", "obsp", "varp", "layers", "uns"] {
        let mut group = b.create_group(name);
        for (k, v) in encoding("dict", "0.1.0") {
            group.set_attr(k, v);
        }
        for (key, values) in varm.iter().filter(|_| name == "varm") {
            let cols = values.len() / g.max(1);
            if cols * g != values.len() {
                return Err(Error::invalid("AnnData", format!("varm `{key}` has {} values for {g} genes", values.len())));
            }
            let ds = group.create_dataset(key).with_f32_data(values).with_shape(&[g as u64, cols as u64]);
            for (k, v) in encoding("array", "0.2.0") {
                ds.set_attr(k, v);
            }
        }
        b.add_group(group.finish());
    }
    let bytes = b.finish().map_err(|e| Error::invalid(format!("HDF5 layout of {}", path.display()), e.to_string()))?;
    super::write_atomic(path, &bytes)
}

/// A matrix of an `.h5ad` and its storage.
#[derive(Clone, Debug)]
pub enum Matrix {
    Dense { key: String, rows: usize, cols: usize },
    Csr { key: String, rows: usize, cols: usize, indptr: Vec<i64> },
}

impl Matrix {
    pub fn rows(&self) -> usize {
        match self {
            Matrix::Dense { rows, .. } | Matrix::Csr { rows, .. } => *rows,
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Matrix::Dense { cols, .. } | Matrix::Csr { cols, .. } => *cols,
        }
    }
    pub fn key(&self) -> &str {
        match self {
            Matrix::Dense { key, .. } | Matrix::Csr { key, .. } => key,
        }
    }
}

/// An opened `.h5ad`, read on demand (metadata and the chunks a read touches), never whole.
pub struct H5ad {
    path: PathBuf,
    file: File,
    /// The file's length: what its datasets may declare is bounded by it.
    len: u64,
}

fn attr_string(v: &AttrValue) -> Option<String> {
    match v {
        AttrValue::String(s) | AttrValue::AsciiString(s) | AttrValue::VarLenString(s) => Some(s.clone()),
        _ => None,
    }
}

impl H5ad {
    pub fn open(path: &Path) -> Result<H5ad> {
        let file = File::open_streaming(path).map_err(|e| Error::bad_file(path, "HDF5", format!("an HDF5 (AnnData .h5ad) file ({e})")))?;
        let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        Ok(H5ad { path: path.to_path_buf(), file, len })
    }

    /// The dataset at `path`, refused when the size it declares could not come from this file:
    /// more than gzip's best ratio (about 1,032:1) allows, plus 64 MiB. The reader library
    /// allocates what a dataset declares; a damaged shape would otherwise abort the process.
    fn dataset(&self, path: &str, what: &str) -> Result<hdf5_pure::Dataset> {
        let ds = self.file.dataset(path).map_err(|e| self.bad(path, format!("{what} ({e})")))?;
        self.checked(ds, path, what)
    }

    /// `ds` (at `path`) if the size it declares fits this file (see `dataset`).
    fn checked(&self, ds: hdf5_pure::Dataset, path: &str, what: &str) -> Result<hdf5_pure::Dataset> {
        let shape = ds.shape().map_err(|e| self.bad(path, e))?;
        let element = ds.element_size().map_err(|e| self.bad(path, e))?;
        let declared = shape.iter().try_fold(element, |acc, &d| acc.checked_mul(d));
        let limit = self.len.saturating_mul(1100).saturating_add(64 << 20);
        match declared {
            Some(bytes) if bytes <= limit => Ok(ds),
            _ => Err(self.bad(path, format!("{what} whose declared size ({shape:?} x {element} bytes) fits a file of {} bytes", self.len))),
        }
    }

    fn bad(&self, field: &str, expected: impl std::fmt::Display) -> Error {
        Error::bad_file(&self.path, field, expected.to_string())
    }

    /// The `encoding-type` attribute of a group or dataset, if any.
    fn encoding_type(&self, path: &str) -> Option<String> {
        let attrs = match self.file.group(path) {
            Ok(g) => g.attrs().ok()?,
            Err(_) => self.file.dataset(path).ok()?.attrs().ok()?,
        };
        attrs.get("encoding-type").and_then(attr_string)
    }

    fn strings(&self, path: &str) -> Result<Vec<String>> {
        let ds = self.dataset(path, "a string dataset")?;
        let strings = ds.read_string().map_err(|e| self.bad(path, format!("strings ({e})")))?;
        // bytes that are not UTF-8 come back as U+FFFD: a label silently changed, refused instead
        if let Some(i) = strings.iter().position(|s| s.contains('\u{FFFD}')) {
            return Err(self.bad(path, format!("UTF-8 strings; entry {i} (`{}`) is not valid UTF-8", strings[i])));
        }
        Ok(strings)
    }

    /// Integer codes of any width, as i64.
    fn codes(&self, path: &str) -> Result<Vec<i64>> {
        let ds = self.dataset(path, "an integer dataset")?;
        match ds.dtype().map_err(|e| self.bad(path, e))? {
            DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::U8 | DType::U16 | DType::U32 => {
                ds.read_i64().map_err(|e| self.bad(path, format!("integers ({e})")))
            }
            other => Err(self.bad(path, format!("integer codes, found {other}"))),
        }
    }

    /// A dataframe's attributes and the name of its index dataset (`_index` unless it says otherwise).
    fn frame(&self, frame: &str) -> Result<(std::collections::HashMap<String, AttrValue>, String)> {
        let group = self.file.group(frame).map_err(|e| self.bad(frame, format!("a dataframe group ({e})")))?;
        let attrs = group.attrs().map_err(|e| self.bad(frame, e))?;
        let index = attrs.get("_index").and_then(attr_string).unwrap_or_else(|| "_index".into());
        Ok((attrs, index))
    }

    /// A dataframe's (`obs` or `var`) index: the dataset named by its `_index` attribute.
    pub fn index(&self, frame: &str) -> Result<Vec<String>> {
        let (_, index) = self.frame(frame)?;
        self.strings(&format!("{frame}/{index}"))
    }

    /// The names in a group (datasets and subgroups), sorted; none when the group is absent.
    pub fn members(&self, group: &str) -> Result<Vec<String>> {
        let Ok(g) = self.file.group(group) else { return Ok(Vec::new()) };
        let mut names = g.datasets().map_err(|e| self.bad(group, e))?;
        names.extend(g.groups().map_err(|e| self.bad(group, e))?);
        names.sort();
        Ok(names)
    }

    /// The columns of a dataframe, in its `column-order` (else by name).
    pub fn columns(&self, frame: &str) -> Result<Vec<String>> {
        let (attrs, index) = self.frame(frame)?;
        if let Some(AttrValue::VarLenStringArray(v) | AttrValue::StringArray(v)) = attrs.get("column-order") {
            return Ok(v.clone());
        }
        let mut names = self.members(frame)?;
        names.retain(|n| *n != index);
        Ok(names)
    }

    /// One column of a dataframe as strings: categorical (categories + codes of any integer
    /// width; code -1 is a missing value, an error here), a plain string array, or numbers
    /// (integers as written, booleans as `True`/`False`, floats in Rust's shortest form).
    pub fn column(&self, frame: &str, name: &str) -> Result<Vec<String>> {
        let path = format!("{frame}/{name}");
        if self.file.group(&path).is_ok() {
            if self.encoding_type(&path).as_deref() != Some("categorical") {
                return Err(self.bad(&path, "a categorical column (a group with categories and codes)"));
            }
            let categories = self.strings(&format!("{path}/categories"))?;
            let codes = self.codes(&format!("{path}/codes"))?;
            return codes
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    usize::try_from(c).ok().and_then(|c| categories.get(c).cloned()).ok_or_else(|| {
                        self.bad(&format!("{path}/codes"), format!("codes in 0..{} (row {i} has {c}: a missing value?)", categories.len()))
                    })
                })
                .collect();
        }
        let Ok(ds) = self.file.dataset(&path) else {
            let have = self.columns(frame).map(|c| c.join(", ")).unwrap_or_default();
            return Err(self.bad(&path, format!("a column `{name}` in `{frame}` (it has: {have})")));
        };
        let ds = self.checked(ds, &path, "a column")?;
        let numbers = |r: std::result::Result<Vec<i64>, hdf5_pure::Error>| {
            r.map(|v| v.iter().map(i64::to_string).collect()).map_err(|e| self.bad(&path, format!("integers ({e})")))
        };
        match ds.dtype().map_err(|e| self.bad(&path, e))? {
            DType::String | DType::VariableLengthString => self.strings(&path),
            DType::Enum(names) if names == ["FALSE", "TRUE"] => {
                let v = ds.read_i64().map_err(|e| self.bad(&path, format!("booleans ({e})")))?;
                Ok(v.iter().map(|&b| if b != 0 { "True" } else { "False" }.to_string()).collect())
            }
            DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::U8 | DType::U16 | DType::U32 | DType::U64 => numbers(ds.read_i64()),
            DType::F32 | DType::F64 => {
                let v = ds.read_f64().map_err(|e| self.bad(&path, format!("numbers ({e})")))?;
                Ok(v.iter().map(f64::to_string).collect())
            }
            other => Err(self.bad(&path, format!("strings, categories or numbers, found {other}"))),
        }
    }

    /// Where the matrix `key` (`X`, `obsm/X_hvg`, a layer) is and how it is stored: a dense 2-D
    /// dataset, or a CSR group (`data`, `indices`, `indptr`, a `shape` attribute).
    pub fn matrix(&self, key: &str) -> Result<Matrix> {
        let too_wide =
            |cols: u64| (cols > MAX_COLUMNS as u64).then(|| self.bad(key, format!("at most {MAX_COLUMNS} columns (genes), found {cols}")));
        if let Ok(ds) = self.file.dataset(key) {
            return match ds.shape().map_err(|e| self.bad(key, e))?[..] {
                [_, cols] if too_wide(cols).is_some() => Err(too_wide(cols).expect("checked")),
                [rows, cols] => Ok(Matrix::Dense { key: key.into(), rows: rows as usize, cols: cols as usize }),
                ref s => Err(self.bad(key, format!("a 2-D matrix, found shape {s:?}"))),
            };
        }
        let Ok(group) = self.file.group(key) else {
            return Err(self.bad(key, "a matrix (dense dataset or CSR group); not found"));
        };
        let encoding = self.encoding_type(key).unwrap_or_default();
        if encoding != "csr_matrix" {
            return Err(self.bad(key, format!("a dense or CSR matrix, found `{encoding}` (convert CSC with `.tocsr()`)")));
        }
        let attrs = group.attrs().map_err(|e| self.bad(key, e))?;
        let shape: Vec<i64> = match attrs.get("shape") {
            Some(AttrValue::I64Array(v)) => v.clone(),
            Some(AttrValue::U64Array(v)) => v.iter().map(|&x| x as i64).collect(),
            Some(AttrValue::I32Array(v)) => v.iter().map(|&x| x as i64).collect(),
            _ => return Err(self.bad(&format!("{key}.shape"), "a 2-integer shape attribute")),
        };
        let [rows, cols] = shape[..] else { return Err(self.bad(&format!("{key}.shape"), format!("2 dimensions, found {shape:?}"))) };
        if rows < 0 || cols < 0 {
            return Err(self.bad(&format!("{key}.shape"), format!("non-negative dimensions, found {shape:?}")));
        }
        if let Some(e) = too_wide(cols as u64) {
            return Err(e);
        }
        let indptr = self.codes(&format!("{key}/indptr"))?;
        if indptr.len() != rows as usize + 1 || indptr[0] != 0 || indptr.windows(2).any(|w| w[1] < w[0]) {
            return Err(self.bad(&format!("{key}/indptr"), format!("{} non-decreasing offsets from 0", rows + 1)));
        }
        Ok(Matrix::Csr { key: key.into(), rows: rows as usize, cols: cols as usize, indptr })
    }

    /// Rows `start..start + count` of a matrix, dense `[count, cols]` f32. Only the chunks these
    /// rows touch are read.
    pub fn rows(&self, m: &Matrix, start: usize, count: usize) -> Result<Vec<f32>> {
        if start.checked_add(count).is_none_or(|end| end > m.rows()) {
            return Err(self.bad(m.key(), format!("rows {start}..{} within its {} rows", start.saturating_add(count), m.rows())));
        }
        let out = match m {
            Matrix::Dense { key, .. } => self.dense_rows(key, start, count)?,
            Matrix::Csr { key, cols, indptr, .. } => {
                let (lo, hi) = (indptr[start] as u64, indptr[start + count] as u64);
                let (data_key, index_key) = (format!("{key}/data"), format!("{key}/indices"));
                let open = |k: &str| self.dataset(k, "a CSR array");
                let data = open(&data_key)?.read_f32_rows(lo, hi - lo).map_err(|e| self.bad(&data_key, e))?;
                let indices = open(&index_key)?.read_i64_rows(lo, hi - lo).map_err(|e| self.bad(&index_key, e))?;
                if data.len() != (hi - lo) as usize || indices.len() != data.len() {
                    return Err(self.bad(&data_key, format!("entries {lo}..{hi} in data and indices")));
                }
                // The shape is what the file declares (columns checked by `matrix`): allocate only
                // what fits, or fail cleanly.
                let len = count.saturating_mul(*cols);
                let mut out = Vec::new();
                out.try_reserve_exact(len)
                    .map_err(|_| self.bad(key, format!("rows that fit in memory ({count} rows of {cols} columns)")))?;
                out.resize(len, 0.0f32);
                // The row that last set each column: a second entry for it in a row is an error
                // (anndata would sum them; a writer that emits them is broken). Unsorted column
                // indices are valid CSR and read as scipy reads them.
                let mut set_in_row = vec![usize::MAX; *cols];
                for r in 0..count {
                    let (a, b) = ((indptr[start + r] as u64 - lo) as usize, (indptr[start + r + 1] as u64 - lo) as usize);
                    for (&c, &v) in indices[a..b].iter().zip(&data[a..b]) {
                        let c = usize::try_from(c)
                            .ok()
                            .filter(|&c| c < *cols)
                            .ok_or_else(|| self.bad(&index_key, format!("column indices in 0..{cols} (row {} has {c})", start + r)))?;
                        if set_in_row[c] == r {
                            return Err(self.bad(&index_key, format!("each column at most once per row (row {} has {c} twice)", start + r)));
                        }
                        set_in_row[c] = r;
                        out[r * cols + c] = v;
                    }
                }
                out
            }
        };
        if out.len() != count * m.cols() {
            return Err(self.bad(m.key(), format!("{} values for rows {start}..{}, found {}", count * m.cols(), start + count, out.len())));
        }
        Ok(out)
    }

    /// Shape `(rows, columns)` of a dense 2-D matrix.
    pub fn dense_shape(&self, key: &str) -> Result<(usize, usize)> {
        match self.matrix(key)? {
            Matrix::Dense { rows, cols, .. } => Ok((rows, cols)),
            Matrix::Csr { .. } => Err(self.bad(key, "a dense 2-D matrix, found CSR")),
        }
    }

    /// Rows `start..start + count` of a dense matrix as f32 (only the chunks they touch are read).
    pub fn dense_rows(&self, key: &str, start: usize, count: usize) -> Result<Vec<f32>> {
        let ds = self.dataset(key, "a dense 2-D matrix")?;
        ds.read_f32_rows(start as u64, count as u64).map_err(|e| self.bad(key, format!("float rows {start}..{} ({e})", start + count)))
    }

    /// The whole file as an [`AnnData`] with `X` (dense or CSR) and the named obs columns.
    pub fn read(&self, obs_columns: &[&str]) -> Result<AnnData> {
        let x = self.matrix("X")?;
        let obs = obs_columns.iter().map(|c| Ok((c.to_string(), self.column("obs", c)?))).collect::<Result<Vec<_>>>()?;
        let a = AnnData { x: self.rows(&x, 0, x.rows())?, obs_names: self.index("obs")?, var_names: self.index("var")?, obs };
        if a.var_names.len() != x.cols() {
            return Err(self.bad("var", format!("{} genes as in X, found {}", x.cols(), a.var_names.len())));
        }
        Ok(a)
    }
}
