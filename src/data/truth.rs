//! The planted means of a synthetic store: each cell type's expected control expression and each
//! (perturbation, cell type)'s expected change, the infinite-cell values the observed means
//! estimate. `data::synth` computes them (`synth::truth_means`); evaluation reads them to give every
//! figure its noise floor. Two files beside the store, so that the files written before them stay
//! byte-identical: `synth_means.json` (shape and the Monte Carlo's own error) and `synth_means.f32`
//! (little-endian f32: the controls `[cell types, genes]`, then the changes
//! `[cell types, perturbations, genes]`, perturbations in store order, the control's change zero).
//! Absent on real data and on `replogle` stores made without `synth --truth`.

use super::store::Store;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The planted pathways beside a synthetic store: which pathways each perturbation belongs to and
/// where they act, what retrieval and selection are scored against (`score::planted`).
pub const TRUTH_FILE: &str = "synth_truth.json";

/// `synth_truth.json` as `data::synth` writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TruthFile {
    /// Per perturbation (store order, control first), its pathways.
    pub pathways_of: Vec<Vec<usize>>,
    /// `[cell type][pathway]` activity; 0 means silent.
    pub activity: Vec<Vec<f32>>,
    /// `[cell type][perturbation]`: the pathways through which it acts there. Absent in stores
    /// written before context specificity existed: then every active pathway of the perturbation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acting: Option<Vec<Vec<Vec<usize>>>>,
}

pub const MEANS_META: &str = "synth_means.json";
pub const MEANS_DATA: &str = "synth_means.f32";

/// `synth_means.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MeansMeta {
    pub genes: usize,
    pub cell_types: usize,
    /// Perturbations, the control included (store order).
    pub perturbations: usize,
    /// Monte Carlo cells per (substate, batch) stratum of each condition (`synth::truth_means`).
    pub samples_per_stratum: usize,
    /// Per cell type, the mean over its perturbations of the expected squared error, averaged over
    /// genes, of the estimated change against the exact expectation (the estimate's own MSE).
    pub change_mc_mse: Vec<f64>,
    /// Per cell type, the same for the control mean.
    pub control_mc_mse: Vec<f64>,
    pub seconds: f64,
}

/// The planted means, in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct TruthMeans {
    pub meta: MeansMeta,
    /// `[cell types, genes]`.
    pub control: Vec<f32>,
    /// `[cell types, perturbations, genes]`.
    pub change: Vec<f32>,
}

impl TruthMeans {
    /// The expected change of `perturbation` in `cell_type`, `[genes]`.
    pub fn change(&self, perturbation: u32, cell_type: u32) -> Vec<f64> {
        let (g, np) = (self.meta.genes, self.meta.perturbations);
        let at = (cell_type as usize * np + perturbation as usize) * g;
        self.change[at..at + g].iter().map(|&v| v as f64).collect()
    }
    /// The estimate's own MSE for the changes of `cell_type` (`MeansMeta::change_mc_mse`).
    pub fn change_mc_mse(&self, cell_type: usize) -> f64 {
        self.meta.change_mc_mse.get(cell_type).copied().unwrap_or(f64::NAN)
    }
    /// The expected control expression of `cell_type`, `[genes]`.
    pub fn control(&self, cell_type: u32) -> Vec<f64> {
        let g = self.meta.genes;
        self.control[cell_type as usize * g..(cell_type as usize + 1) * g].iter().map(|&v| v as f64).collect()
    }

    /// Writes both files into `dir` (each atomically, the data first: the metadata names a store's
    /// means, so a directory never has metadata without its data).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let bytes: Vec<u8> = self.control.iter().chain(&self.change).flat_map(|x| x.to_le_bytes()).collect();
        super::write_atomic(&dir.join(MEANS_DATA), &bytes)?;
        super::write_atomic(&dir.join(MEANS_META), serde_json::to_string_pretty(&self.meta).expect("meta serialises").as_bytes())
    }

    /// The store's planted means, or None when it has none; files that do not fit the store are an
    /// error naming the file and field.
    pub fn load(store: &Store) -> Result<Option<TruthMeans>> {
        let meta_path = store.dir.join(MEANS_META);
        if !meta_path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let meta: MeansMeta =
            serde_json::from_str(&text).map_err(|e| Error::bad_file(&meta_path, "json", format!("planted means metadata ({e})")))?;
        let m = &store.manifest;
        for (field, have, want) in [
            ("genes", meta.genes, m.n_genes()),
            ("cell_types", meta.cell_types, m.cell_types.len()),
            ("perturbations", meta.perturbations, m.n_perturbations()),
        ] {
            if have != want {
                return Err(Error::bad_file(&meta_path, field, format!("{want}, as the store's manifest (found {have})")));
            }
        }
        let data_path = store.dir.join(MEANS_DATA);
        let bytes = std::fs::read(&data_path).map_err(|e| Error::io(&data_path, e))?;
        let (g, nc, np) = (meta.genes, meta.cell_types, meta.perturbations);
        let expected = 4 * (nc * g + nc * np * g);
        if bytes.len() != expected {
            return Err(Error::bad_file(
                &data_path,
                "length",
                format!("{expected} bytes for {nc} x ({np} + 1) x {g} f32 (found {})", bytes.len()),
            ));
        }
        let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::bad_file(&data_path, "values", format!("finite numbers (value {i} is {})", values[i])));
        }
        let change = values[nc * g..].to_vec();
        let control = values[..nc * g].to_vec();
        Ok(Some(TruthMeans { meta, control, change }))
    }
}
