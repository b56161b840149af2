//! `export`: the inverse of `prepare`.

use crate::data::store::Store;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The inverse of `prepare`, for moving a store (e.g. the built-in data) into other tools: writes
/// `data.h5ad` (X dense float32; obs `gene`, `cell_line`, `gem_group` categoricals), `genept.safetensors`
/// (one vector per perturbation, the control left out) and `split.toml` into `dir`. Holds the
/// expression in memory (the `.h5ad` is assembled whole).
pub fn export(store: &Store, dir: &Path) -> Result<Vec<PathBuf>> {
    use crate::data::h5ad::{write_h5ad, AnnData};
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
    crate::data::write_atomic(&paths[1], &st)?;
    let split = std::fs::read(&store.split_path).map_err(|e| Error::io(&store.split_path, e))?;
    crate::data::write_atomic(&paths[2], &split)?;
    Ok(paths.to_vec())
}
