//! The dataset store: one directory holding `manifest.json` and flat little-endian arrays.
//!
//! | file                    | contents                                   |
//! |-------------------------|--------------------------------------------|
//! | `manifest.json`         | sizes, dtypes, names (see `Manifest`)      |
//! | `expression.bin`        | cells x genes, f16 or f32, log-normalised  |
//! | `cell_perturbation.u32` | per cell, index into `perturbations`       |
//! | `cell_type.u32`         | per cell, index into `cell_types`          |
//! | `cell_batch.u32`        | per cell, batch (gem group) in 0..n_batches|
//! | `genept.f32`            | perturbations x embed_dim (control row 0)  |
//! | `split.toml`            | cell-load style few-shot split             |
//!
//! Opening checks every size against the manifest and every code against its range, so a
//! truncated or corrupt store is an error naming the file, never a panic or an out-of-bounds read.
//! Writing goes to `<dir>.partial` and is renamed into place only when complete.

use crate::{Error, Result};
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "ptrag-store";
pub const VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExprDtype {
    F16,
    F32,
}
impl ExprDtype {
    pub fn size(self) -> usize {
        match self {
            ExprDtype::F16 => 2,
            ExprDtype::F32 => 4,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// Where the data came from (e.g. `synth preset=small seed=42`); used to validate caches.
    pub source: String,
    pub n_cells: usize,
    pub expression_dtype: ExprDtype,
    pub genes: Vec<String>,
    pub perturbations: Vec<String>,
    /// The control label; must be one of `perturbations`.
    pub control: String,
    pub cell_types: Vec<String>,
    pub n_batches: usize,
    pub embed_dim: usize,
    /// A hash of the data (expression, cell labels, GenePT, names; not `source`), written by
    /// `StoreWriter::finish`: a resumed run checks that its store is the one it trained on.
    /// Stores written before it existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// FNV-1a over 64 bits: a fingerprint, not a defence against a crafted collision.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// The last part of a store's fingerprint: its names and sizes, as the manifest holds them.
    fn update_names_and_sizes(&mut self, m: &Manifest) {
        self.update(&serde_json::to_vec(&(&m.genes, &m.perturbations, &m.control, &m.cell_types)).expect("names serialise"));
        self.update(&serde_json::to_vec(&(m.n_batches, m.embed_dim, m.expression_dtype)).expect("sizes serialise"));
    }
}

impl Manifest {
    pub fn n_genes(&self) -> usize {
        self.genes.len()
    }
    pub fn n_perturbations(&self) -> usize {
        self.perturbations.len()
    }
}

/// An expression matrix in the precision a store keeps it: IEEE half bit patterns, or f32.
pub enum StoredExpression {
    F16(Vec<u16>),
    F32(Vec<f32>),
}

/// An opened, validated store.
pub struct Store {
    pub dir: PathBuf,
    pub manifest: Manifest,
    expression: Mmap,
    /// `None` in a store prepared with `--genept none` (embed_dim 0).
    genept: Option<Mmap>,
    pub cell_perturbation: Vec<u32>,
    pub cell_type: Vec<u32>,
    pub cell_batch: Vec<u32>,
    pub control_index: u32,
    pub split_path: PathBuf,
}

fn read_codes(path: &Path, n: usize, limit: usize, what: &str) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if n.checked_mul(4) != Some(bytes.len()) {
        return Err(Error::bad_file(
            path,
            what,
            format!("{n} little-endian u32 values ({} bytes), found {} bytes", n as u128 * 4, bytes.len()),
        ));
    }
    let codes: Vec<u32> = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    if let Some((i, &c)) = codes.iter().enumerate().find(|(_, &c)| c as usize >= limit) {
        return Err(Error::bad_file(path, what, format!("codes below {limit}; cell {i} has {c}")));
    }
    Ok(codes)
}

fn map_exact(path: &Path, expected: usize, what: &str) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
    if len != expected {
        return Err(Error::bad_file(
            path,
            what,
            format!("{expected} bytes from the manifest's sizes, found {len} (truncated or wrong store?)"),
        ));
    }
    if len == 0 {
        return Err(Error::bad_file(path, what, "a non-empty array"));
    }
    // SAFETY: the mapping is read-only and we only read it through bounds-checked slices of the
    // length verified above. Another process truncating the file while mapped would fault; stores
    // are written once (to a temporary directory, then renamed) and never modified in place.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

fn check_unique(path: &Path, field: &str, names: &[String]) -> Result<()> {
    let mut seen = HashSet::new();
    for n in names {
        if !seen.insert(n.as_str()) {
            return Err(Error::bad_file(path, field, format!("unique names; `{n}` appears twice")));
        }
    }
    Ok(())
}

impl Store {
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let mpath = dir.join("manifest.json");
        let text = std::fs::read_to_string(&mpath).map_err(|e| Error::io(&mpath, e))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| Error::bad_file(&mpath, "manifest", format!("valid JSON manifest: {e}")))?;
        if manifest.format != FORMAT || manifest.version != VERSION {
            return Err(Error::bad_file(
                &mpath,
                "format/version",
                format!("{FORMAT} version {VERSION}, found {} version {}", manifest.format, manifest.version),
            ));
        }
        check_unique(&mpath, "genes", &manifest.genes)?;
        check_unique(&mpath, "perturbations", &manifest.perturbations)?;
        check_unique(&mpath, "cell_types", &manifest.cell_types)?;
        let control_index = manifest.perturbations.iter().position(|p| *p == manifest.control).ok_or_else(|| {
            Error::bad_file(&mpath, "control", format!("the control label `{}` among the perturbations", manifest.control))
        })? as u32;
        // Stores list the control first: a control label naming another perturbation would make
        // that perturbation's cells the basal cells of every model.
        if control_index != 0 {
            return Err(Error::bad_file(
                &mpath,
                "control",
                format!(
                    "the first perturbation (`{}`), as stores list the control first; `{}` is perturbation {control_index}",
                    manifest.perturbations[0], manifest.control
                ),
            ));
        }
        if manifest.n_cells == 0 || manifest.genes.is_empty() || manifest.cell_types.is_empty() || manifest.n_batches == 0 {
            return Err(Error::bad_file(&mpath, "sizes", "non-zero cells, genes, cell types and batches"));
        }
        let (n, g) = (manifest.n_cells, manifest.n_genes());
        // Sizes the manifest declares, checked before anything is allocated for them: their
        // products may not overflow, and a batch group needs at least one cell.
        if manifest.n_batches > n {
            return Err(Error::bad_file(
                &mpath,
                "n_batches",
                format!("at most one batch group per cell ({n} cells), found {}", manifest.n_batches),
            ));
        }
        let bytes = |a: usize, b: usize, c: usize, what: &str| {
            a.checked_mul(b)
                .and_then(|x| x.checked_mul(c))
                .ok_or_else(|| Error::bad_file(&mpath, what, format!("sizes whose product fits in memory ({a} x {b} x {c} overflows)")))
        };
        let expression = map_exact(&dir.join("expression.bin"), bytes(n, g, manifest.expression_dtype.size(), "n_cells")?, "expression")?;
        let genept = match manifest.embed_dim {
            0 => None,
            d => Some(map_exact(&dir.join("genept.f32"), bytes(manifest.n_perturbations(), d, 4, "embed_dim")?, "genept")?),
        };
        let cell_perturbation = read_codes(&dir.join("cell_perturbation.u32"), n, manifest.n_perturbations(), "cell_perturbation")?;
        let cell_type = read_codes(&dir.join("cell_type.u32"), n, manifest.cell_types.len(), "cell_type")?;
        let cell_batch = read_codes(&dir.join("cell_batch.u32"), n, manifest.n_batches, "cell_batch")?;
        let split_path = dir.join("split.toml");
        Ok(Store { dir, manifest, expression, genept, cell_perturbation, cell_type, cell_batch, control_index, split_path })
    }

    pub fn n_cells(&self) -> usize {
        self.manifest.n_cells
    }
    pub fn n_genes(&self) -> usize {
        self.manifest.n_genes()
    }

    /// Every expression value is finite and not negative (the store holds log-normalised values):
    /// else an error naming `expression.bin`, the first bad cell (with its perturbation and cell
    /// type) and gene. A value changed in place after the store was written would otherwise train
    /// to NaN metrics.
    pub fn check_values(&self) -> Result<()> {
        let g = self.n_genes();
        let mut row = vec![0.0f32; g];
        for cell in 0..self.n_cells() {
            self.expression_row(cell, &mut row);
            if let Some(gene) = row.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
                let m = &self.manifest;
                let (p, ct) = (self.cell_perturbation[cell] as usize, self.cell_type[cell] as usize);
                let label = |names: &[String], i: usize| names.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
                return Err(Error::bad_file(
                    self.dir.join("expression.bin"),
                    format!("cell {cell} ({}, {}), gene {}", label(&m.perturbations, p), label(&m.cell_types, ct), label(&m.genes, gene)),
                    format!("a finite, non-negative log-normalised value (found {})", row[gene]),
                ));
            }
        }
        Ok(())
    }

    /// The fingerprint of the data as the store's files hold it now, computed as `StoreWriter`
    /// computed it when it wrote them.
    pub fn current_fingerprint(&self) -> String {
        let mut f = Fnv::new();
        f.update(&self.expression);
        for codes in [&self.cell_perturbation, &self.cell_type, &self.cell_batch] {
            codes.iter().for_each(|c| f.update(&c.to_le_bytes()));
        }
        if let Some(genept) = &self.genept {
            f.update(genept);
        }
        f.update_names_and_sizes(&self.manifest);
        format!("{:016x}", f.0)
    }

    /// The store's files still hold the data its manifest's fingerprint was computed from: a file
    /// rewritten in place after the store was written (a changed value, label or code) is an error
    /// naming the manifest and both fingerprints. Reads every byte, once per store and process
    /// (`train` then its test evaluation, `evaluate` over every fold of every run, open the same
    /// store again and again). Stores written before fingerprints existed are not checked.
    pub fn verify_fingerprint(&self) -> Result<()> {
        use std::sync::{Mutex, OnceLock};
        static VERIFIED: OnceLock<Mutex<HashSet<(PathBuf, String)>>> = OnceLock::new();
        let Some(recorded) = &self.manifest.fingerprint else { return Ok(()) };
        let key = (self.dir.clone(), recorded.clone());
        let verified = VERIFIED.get_or_init(Default::default);
        if verified.lock().expect("not poisoned").contains(&key) {
            return Ok(());
        }
        let now = self.current_fingerprint();
        if &now != recorded {
            return Err(Error::bad_file(
                self.dir.join("manifest.json"),
                "fingerprint",
                format!(
                    "the store's files as written ({recorded}); they now give {now}: a file was changed in place after the store \
                     was written (prepare or synth it again)"
                ),
            ));
        }
        verified.lock().expect("not poisoned").insert(key);
        Ok(())
    }

    /// Copies cell `cell`'s expression into `out` (length n_genes), converting to f32.
    pub fn expression_row(&self, cell: usize, out: &mut [f32]) {
        let g = self.n_genes();
        debug_assert_eq!(out.len(), g);
        match self.manifest.expression_dtype {
            ExprDtype::F16 => {
                let bytes = &self.expression[cell * g * 2..(cell + 1) * g * 2];
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            ExprDtype::F32 => {
                let bytes = &self.expression[cell * g * 4..(cell + 1) * g * 4];
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }

    /// The expression of the cells `rows` (cells x genes) in its stored precision, read from the
    /// mapped file: a GPU upload takes the matrix a chunk of rows at a time.
    pub fn stored_rows(&self, rows: std::ops::Range<usize>) -> StoredExpression {
        let row_bytes = self.n_genes() * self.manifest.expression_dtype.size();
        let bytes = &self.expression[rows.start * row_bytes..rows.end * row_bytes];
        match self.manifest.expression_dtype {
            ExprDtype::F16 => StoredExpression::F16(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()),
            ExprDtype::F32 => StoredExpression::F32(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
        }
    }

    /// The GenePT-like embedding of perturbation `p` (the control's is all zeros; empty without GenePT).
    pub fn genept_row(&self, p: usize) -> Vec<f32> {
        let d = self.manifest.embed_dim;
        let bytes = self.genept.as_deref().map_or(&[][..], |g| &g[p * d * 4..(p + 1) * d * 4]);
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// All GenePT-like embeddings, `[perturbations, embed_dim]` (empty without GenePT).
    pub fn genept_table(&self) -> Vec<f32> {
        self.genept.as_deref().unwrap_or(&[]).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// Whether the store has GenePT vectors (not prepared with `--genept none`).
    pub fn has_genept(&self) -> bool {
        self.genept.is_some()
    }

    /// Per cell, the perturbation and the cell type by name.
    pub fn cell_labels(&self) -> (Vec<String>, Vec<String>) {
        let names = |codes: &[u32], names: &[String]| codes.iter().map(|&c| names[c as usize].clone()).collect();
        (names(&self.cell_perturbation, &self.manifest.perturbations), names(&self.cell_type, &self.manifest.cell_types))
    }

    pub fn perturbation_index(&self, name: &str) -> Option<usize> {
        self.manifest.perturbations.iter().position(|p| p == name)
    }
    pub fn cell_type_index(&self, name: &str) -> Option<usize> {
        self.manifest.cell_types.iter().position(|c| c.eq_ignore_ascii_case(name))
    }
}

/// Streams a store to a partial directory of its own (`<dir>.partial-<pid>`, marked as the
/// engine's), renamed to `<dir>` by `finish`. Dropping it unfinished removes that directory, and
/// only it. It holds `<dir>`'s lock (`data::lock`) from creation to drop, so a second writer of
/// the same store fails at once.
pub struct StoreWriter {
    final_dir: PathBuf,
    tmp_dir: PathBuf,
    _lock: super::lock::DirLock,
    expression: BufWriter<File>,
    dtype: ExprDtype,
    n_genes: usize,
    cell_perturbation: Vec<u32>,
    cell_type: Vec<u32>,
    cell_batch: Vec<u32>,
    /// One encoded row, reused for every cell.
    row_bytes: Vec<u8>,
    /// Of every row written, then (in `finish`) of the rest of the data.
    fingerprint: Fnv,
    finished: bool,
}

impl StoreWriter {
    pub fn create(dir: impl AsRef<Path>, n_genes: usize, dtype: ExprDtype) -> Result<Self> {
        Self::create_with(dir.as_ref(), n_genes, dtype, true)
    }

    /// `create` for a store that must not exist yet (`prepare`): checked under the lock, so that of
    /// two writers started together the second fails instead of replacing the first one's store.
    pub fn create_new(dir: impl AsRef<Path>, n_genes: usize, dtype: ExprDtype) -> Result<Self> {
        Self::create_with(dir.as_ref(), n_genes, dtype, false)
    }

    fn create_with(dir: &Path, n_genes: usize, dtype: ExprDtype, may_replace: bool) -> Result<Self> {
        let final_dir = dir.to_path_buf();
        let lock = super::lock::DirLock::acquire(&final_dir, "store")?;
        if !may_replace && final_dir.exists() {
            return Err(Error::invalid("--out", format!("{} exists; choose another directory or remove it", final_dir.display())));
        }
        if final_dir.exists() && !final_dir.join("manifest.json").exists() {
            return Err(Error::invalid(
                "store",
                format!("{} exists and is not a store; it is never replaced: choose another directory", final_dir.display()),
            ));
        }
        remove_stale_partials(&final_dir)?;
        let tmp_dir = PathBuf::from(format!("{}.partial-{}", final_dir.display(), std::process::id()));
        std::fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
        std::fs::write(tmp_dir.join(PARTIAL_MARK), b"").map_err(|e| Error::io(tmp_dir.join(PARTIAL_MARK), e))?;
        let path = tmp_dir.join("expression.bin");
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(StoreWriter {
            final_dir,
            tmp_dir,
            _lock: lock,
            expression: BufWriter::with_capacity(1 << 22, file),
            dtype,
            n_genes,
            cell_perturbation: Vec::new(),
            cell_type: Vec::new(),
            cell_batch: Vec::new(),
            row_bytes: Vec::with_capacity(n_genes * dtype.size()),
            fingerprint: Fnv::new(),
            finished: false,
        })
    }

    pub fn push_cell(&mut self, expression: &[f32], perturbation: u32, cell_type: u32, batch: u32) -> Result<()> {
        assert_eq!(expression.len(), self.n_genes);
        let buf = &mut self.row_bytes;
        buf.clear();
        // The callers check their inputs with the file's context; checked again in the encoding
        // pass, a store never holds a value that is not finite in its dtype.
        let mut finite = true;
        match self.dtype {
            ExprDtype::F16 => expression.iter().for_each(|&v| {
                let h = half::f16::from_f32(v);
                finite &= h.is_finite();
                buf.extend_from_slice(&h.to_le_bytes())
            }),
            ExprDtype::F32 => expression.iter().for_each(|&v| {
                finite &= v.is_finite();
                buf.extend_from_slice(&v.to_le_bytes())
            }),
        }
        if !finite {
            let representable = |v: f32| if self.dtype == ExprDtype::F16 { half::f16::from_f32(v).is_finite() } else { v.is_finite() };
            let (g, v) = expression.iter().enumerate().find(|(_, v)| !representable(**v)).expect("a value not finite in the dtype");
            let cell = self.n_cells();
            return Err(Error::invalid("expression", format!("finite values within the store's dtype; cell {cell}, gene {g} has {v}")));
        }
        let expression = self.tmp_dir.join("expression.bin");
        super::charge_disk(&expression, self.row_bytes.len())?;
        self.expression.write_all(&self.row_bytes).map_err(|e| Error::io(expression, e))?;
        self.fingerprint.update(&self.row_bytes);
        self.cell_perturbation.push(perturbation);
        self.cell_type.push(cell_type);
        self.cell_batch.push(batch);
        Ok(())
    }

    pub fn n_cells(&self) -> usize {
        self.cell_type.len()
    }

    /// Writes the remaining files and renames the directory into place (replacing an older store).
    pub fn finish(mut self, mut manifest: Manifest, genept: &[f32], split_toml: &str, extra: &[(&str, String)]) -> Result<PathBuf> {
        manifest.n_cells = self.n_cells();
        manifest.expression_dtype = self.dtype;
        assert_eq!(genept.len(), manifest.n_perturbations() * manifest.embed_dim);
        let tmp = self.tmp_dir.clone();
        self.expression.flush().map_err(|e| Error::io(tmp.join("expression.bin"), e))?;
        let le = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let write = |name: &str, bytes: &[u8]| {
            super::charge_disk(&tmp.join(name), bytes.len())?;
            std::fs::write(tmp.join(name), bytes).map_err(|e| Error::io(tmp.join(name), e))
        };
        let arrays = [le(&self.cell_perturbation), le(&self.cell_type), le(&self.cell_batch)];
        let genept = genept.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for bytes in arrays.iter().chain([&genept]) {
            self.fingerprint.update(bytes);
        }
        self.fingerprint.update_names_and_sizes(&manifest);
        manifest.fingerprint = Some(format!("{:016x}", self.fingerprint.0));
        write("cell_perturbation.u32", &arrays[0])?;
        write("cell_type.u32", &arrays[1])?;
        write("cell_batch.u32", &arrays[2])?;
        write("genept.f32", &genept)?;
        write("split.toml", split_toml.as_bytes())?;
        for (name, text) in extra {
            write(name, text.as_bytes())?;
        }
        std::fs::remove_file(tmp.join(PARTIAL_MARK)).map_err(|e| Error::io(tmp.join(PARTIAL_MARK), e))?;
        // The manifest goes last: a directory without one is never a store.
        write("manifest.json", serde_json::to_string_pretty(&manifest).expect("manifest serialises").as_bytes())?;
        if self.final_dir.exists() {
            std::fs::remove_dir_all(&self.final_dir).map_err(|e| Error::io(&self.final_dir, e))?;
        }
        std::fs::rename(&tmp, &self.final_dir).map_err(|e| Error::io(&self.final_dir, e))?;
        self.finished = true;
        Ok(self.final_dir.clone())
    }
}

/// Marks a partial directory as the engine's: only directories holding it are ever removed.
use super::output::PARTIAL_MARK;

/// Removes what killed writers of `final_dir` left: `<dir>.partial-*` directories holding the
/// engine's mark. Called with the store's lock held, so no live writer owns one.
fn remove_stale_partials(final_dir: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (final_dir.parent(), final_dir.file_name()) else { return Ok(()) };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    super::output::remove_marked(parent, &format!("{}.partial-", name.to_string_lossy()))
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp_dir);
        }
    }
}
